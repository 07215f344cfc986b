"""The bench's photo pool (bench/photogen.py), made small: generated once, reused, every file
measured as the size it claims, and served by the bench's image host."""

from __future__ import annotations

from pathlib import Path

import pytest

import bench.photogen
from bench.imagehost import read_directory
from bench.photogen import Kind, photo_pool
from bench.photos import job_order, photo_job
from core.images.measure import measure_image

SMALL = (
    Kind("photo", "JPEG", "jpeg", (96, 64), 2, {"quality": 90}),
    Kind("photo-progressive", "JPEG", "jpeg", (96, 64), 1, {"progressive": True}),
    Kind("web", "WEBP", "webp", (80, 60), 1),
    Kind("screen", "PNG", "png", (300, 640), 1, screenshot=True),
    Kind("phone", "HEIF", "heic", (96, 64), 1),
    Kind("phone", "AVIF", "avif", (96, 64), 1, {"speed": 8}),
)


@pytest.fixture
def small_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench.photogen, "FULL", (640, 480))
    monkeypatch.setattr(bench.photogen, "KINDS", SMALL)


@pytest.mark.usefixtures("small_pool")
def test_the_pool_is_generated_once_and_measures_as_declared(tmp_path: Path) -> None:
    pool = photo_pool(tmp_path, seed=3)
    assert [p.name for p in pool] == [
        "photo-00.jpeg", "photo-01.jpeg", "photo-progressive-00.jpeg", "web-00.webp",
        "screen-00.png", "phone-00.heic", "phone-00.avif",
    ]  # fmt: skip
    for photo in pool:
        assert measure_image(photo.path.read_bytes(), 10**8) == (photo.width, photo.height)
    written = {p.name: p.path.stat().st_mtime_ns for p in pool}
    again = photo_pool(tmp_path, seed=3)
    assert again == pool and {p.name: p.path.stat().st_mtime_ns for p in again} == written
    assert [path.name for path in tmp_path.iterdir()] == [pool[0].path.parent.name]


@pytest.mark.usefixtures("small_pool")
def test_a_seed_makes_the_same_photos(tmp_path: Path) -> None:
    first = photo_pool(tmp_path / "a", seed=5)
    second = photo_pool(tmp_path / "b", seed=5)
    other = photo_pool(tmp_path / "c", seed=6)
    assert first[0].path.read_bytes() == second[0].path.read_bytes()
    assert first[0].path.read_bytes() != other[0].path.read_bytes()


@pytest.mark.usefixtures("small_pool")
def test_the_image_host_serves_the_pool_with_its_content_types(tmp_path: Path) -> None:
    pool = photo_pool(tmp_path, seed=3)
    served = read_directory(pool[0].path.parent)
    assert {name: kind for name, (_, kind) in served.items()} == {
        "photo-00.jpeg": "image/jpeg", "photo-01.jpeg": "image/jpeg",
        "photo-progressive-00.jpeg": "image/jpeg", "web-00.webp": "image/webp",
        "screen-00.png": "image/png", "phone-00.heic": "image/heic", "phone-00.avif": "image/avif",
    }  # fmt: skip
    assert served["phone-00.heic"][0] == pool[5].path.read_bytes()


def test_a_job_takes_every_file_of_the_pool_as_often() -> None:
    order = job_order(7, 70)
    assert sorted(order) == sorted(list(range(7)) * 10) and order != sorted(order)
    assert order == job_order(7, 70)


@pytest.mark.usefixtures("small_pool")
def test_the_photo_job_asks_for_each_photo_in_visits_of_ten(tmp_path: Path) -> None:
    pool = photo_pool(tmp_path, seed=3)
    order = job_order(len(pool), 25)
    body = photo_job(9000, pool, order)
    urls = [url for visit in body["visits"] for url in visit["image_url"]]
    assert body["count"] == 3 and [len(v["image_url"]) for v in body["visits"]] == [10, 10, 5]
    assert urls == [f"http://127.0.0.1:9000/img/{pool[n].name}" for n in order]
