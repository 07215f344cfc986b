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


def test_phone_formats_are_measured_and_checked_end_to_end(
    client: Client, image_server: ImageServer
) -> None:
    # HEIC and AVIF through the real workers: measured, or failed with the decode reason.
    good = {"img/photo.heic": (320, 240), "img/photo.avif": (200, 150)}
    bad = {
        "RP00201": "img/truncated.heic",
        "RP00202": "img/truncated.avif",
        "RP00203": "img/bomb.heic",
    }
    job_id = client.submit_ok(
        job(
            ("RP00200", [image_server.url(path) for path in good]),
            *[(store, [image_server.url(path)]) for store, path in bad.items()],
        )
    )
    final = client.wait(job_id, timeout=60)
    reasons = {entry["store_id"]: entry["error"] for entry in final["error"]}
    assert sorted(reasons) == sorted(bad)
    for store, path in bad.items():
        assert reasons[store].startswith(f"image decode failed: {image_server.url(path)}: ")
    assert "too many pixels" in reasons["RP00203"]
    measured = {
        row["image_url"]: (row["width"], row["height"])
        for row in client.all_results(job_id)
        if row["state"] == "done"
    }
    assert measured == {image_server.url(path): size for path, size in good.items()}
