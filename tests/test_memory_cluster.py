"""A node whose byte budget (2 MB) is smaller than every image of a job, bodies and decodes
alike: each image waits its turn and runs alone, and the job still completes, each image
downloaded and settled exactly once."""

from __future__ import annotations

import io
import random
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from core.images.nodememory import HEADER, MAGIC
from harness.client import Client, job
from harness.imageserver import ImageServer
from harness.service import ServiceProcess, StartService

pytestmark = pytest.mark.timeout(300)

BUDGET = 2_000_000
# Noise does not compress: each file is larger than the whole budget.
SIZES = {"noise.png": ("PNG", 900, 900), "noise.jpg": ("JPEG", 1600, 1200)}
IMAGES = 30


def noise(fmt: str, width: int, height: int) -> bytes:
    pixels = random.Random(width).randbytes(width * height * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", (width, height), pixels).save(out, fmt, quality=95)
    return out.getvalue()


@pytest.fixture(scope="module")
def tight_service(service_with: StartService) -> ServiceProcess:
    return service_with(
        "tight",
        {
            "IMAGE_SERVICE_NODE_MEMORY_BUDGET": str(BUDGET),
            "IMAGE_SERVICE_GPU_DELAY": "0-0.01",
        },
    )


def test_a_node_with_a_budget_smaller_than_its_images_completes_the_job(
    tight_service: ServiceProcess, image_server: ImageServer
) -> None:
    for name, (fmt, width, height) in SIZES.items():
        image_server.files[name] = (noise(fmt, width, height), f"image/{fmt.lower()}")
        assert len(image_server.files[name][0]) > BUDGET
    names = list(SIZES)
    urls = [image_server.url(f"img/{names[i % 2]}?tight={i}") for i in range(IMAGES)]
    client = Client(tight_service.url)
    job_id = client.submit_ok(
        job(*[(f"RP{n + 1:05d}", urls[n * 5 : (n + 1) * 5]) for n in range(6)])
    )

    assert client.wait(job_id, timeout=240) == {"status": "completed", "job_id": job_id}
    rows = client.all_results(job_id)
    assert [row["image_url"] for row in rows] == urls
    assert [(row["state"], row["width"], row["height"]) for row in rows] == [
        ("done", *SIZES[names[i % 2]][1:]) for i in range(IMAGES)
    ]
    assert image_server.tagged_hits("tight") == dict.fromkeys(range(IMAGES), 1)
    # Every byte was given back: the node's accounting file holds none.
    (node_id,) = {row["node_id"] for row in rows}
    path = Path(tempfile.gettempdir()) / f"image-service-memory-{node_id}.lock"
    magic, _, in_use, decoding, waiting_bodies, waiting_decodes, *_ = HEADER.unpack(
        path.read_bytes()[: HEADER.size]
    )
    assert (magic, in_use, decoding, waiting_bodies, waiting_decodes) == (MAGIC, 0, 0, 0, 0)
