"""A corpus of hostile and odd images, end to end: each ends as the right measurement or as a
per-store failure with a reason, within the download time limit."""

from __future__ import annotations

import time

import pytest

from harness.client import Client, job
from harness.imageserver import ImageServer

MEASURED = {  # path: (width, height)
    "img/png-named.jpg": (300, 200),
    "img/animated.gif": (30, 20),
    "img/cmyk.jpg": (50, 40),
    "img/deep.png": (33, 22),
    "img/rotated.jpg": (40, 10),
}
FAILING = {  # path: start of the reason
    "img/empty.png": "not an image: ",
    "img/page.jpg": "not an image: ",
    "img/truncated.png": "image decode failed: ",
    "img/bomb.png": "image decode failed: ",
    "trickle/x.png": "image download failed: ",
    "silent/x.png": "image download failed: ",
}


@pytest.mark.parametrize("path", list(MEASURED))
def test_odd_but_valid_images_are_measured(
    client: Client, image_server: ImageServer, path: str
) -> None:
    job_id = client.submit_ok(job(("RP00001", [image_server.url(path)])))
    assert client.wait(job_id)["status"] == "completed"
    [row] = client.all_results(job_id)
    width, height = MEASURED[path]
    assert (row["width"], row["height"], row["perimeter"]) == (width, height, 2 * (width + height))


def test_hostile_images_fail_their_store_within_the_time_limit(
    client: Client, image_server: ImageServer
) -> None:
    stores = {path: f"RP{n + 100:05d}" for n, path in enumerate(FAILING)}
    started = time.monotonic()
    job_id = client.submit_ok(job(*[(stores[p], [image_server.url(p)]) for p in FAILING]))
    final = client.wait(job_id, timeout=60)
    # The session service allows 4 s per image download, retries included.
    assert time.monotonic() - started < 20
    reasons = {entry["store_id"]: entry["error"] for entry in final["error"]}
    for path, prefix in FAILING.items():
        assert reasons[stores[path]].startswith(prefix), (path, reasons[stores[path]])
    assert "within 4 s" in reasons[stores["trickle/x.png"]]
    assert "pixels" in reasons[stores["img/bomb.png"]]
