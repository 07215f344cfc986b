from __future__ import annotations

import asyncio
import io
import threading
from typing import Any

import pillow_heif.as_plugin
import pytest
from PIL import AvifImagePlugin, Image, features

import core.images.measure
import core.images.processing
from core.images.measure import BrokenImageError, NotAnImageError, measure_image, open_image
from core.images.processing import Budget, Stages, process_image
from core.models import ImageTask
from harness.imageserver import encode, encode_noisy, gif_with_comments, heif_declaring

LIMIT = 10_000_000


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_measures_every_common_format(fmt: str) -> None:
    assert measure_image(encode(fmt, 123, 45), LIMIT) == (123, 45)


def test_this_pillow_decodes_avif_itself() -> None:
    # AVIF comes from Pillow's wheel, not from a plugin: a Pillow built without libavif would
    # answer "not an image" for every AVIF photo.
    assert features.check("avif")


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_measures_phone_formats(fmt: str) -> None:
    assert measure_image(encode_noisy(fmt, 321, 123), LIMIT) == (321, 123)


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_a_phone_photo_cut_short_fails_to_decode(fmt: str) -> None:
    data = encode_noisy(fmt, 320, 240)
    for cut in (len(data) // 2, len(data) - 16, 64):  # in the picture, at its end, in the header
        with pytest.raises(BrokenImageError, match=r"^cannot decode: ") as failure:
            measure_image(data[:cut], LIMIT)
        assert not str(failure.value).endswith("\n")


def test_a_video_s_container_is_not_an_image() -> None:
    # The same ISO box structure as HEIF and AVIF, a video's brand.
    with pytest.raises(NotAnImageError):
        measure_image(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 64, LIMIT)


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_a_phone_format_declaring_a_huge_size_is_refused_before_decoding(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[object] = []

    def load(self: Image.Image) -> None:
        decoded.append(self)

    monkeypatch.setattr(pillow_heif.as_plugin.HeifImageFile, "load", load)
    monkeypatch.setattr(AvifImagePlugin.AvifImageFile, "load", load)
    data = heif_declaring(fmt, 5_000, 5_000)  # 64 x 64 inside; its header says 25 MP
    with pytest.raises(BrokenImageError, match="too many pixels"):
        open_image(data, LIMIT)
    assert decoded == []


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_a_phone_format_declaring_a_size_beyond_any_bound_is_broken(fmt: str) -> None:
    # libavif refuses past 16,384 x 16,384 as it parses the header, before ours is read.
    with pytest.raises(BrokenImageError, match=r"^(too many pixels|cannot decode)"):
        measure_image(heif_declaring(fmt, 200_000, 200_000), 10**12)


def test_truncated_image_is_broken() -> None:
    data = encode("PNG", 300, 300)
    with pytest.raises(BrokenImageError):
        measure_image(data[: len(data) // 2], LIMIT)


def test_html_is_not_an_image() -> None:
    with pytest.raises(NotAnImageError):
        measure_image(b"<html></html>", LIMIT)


def test_empty_body_is_not_an_image() -> None:
    with pytest.raises(NotAnImageError):
        measure_image(b"", LIMIT)


def test_pixel_limit_is_an_error_not_a_warning() -> None:
    with pytest.raises(BrokenImageError, match="pixels"):
        measure_image(encode("PNG", 2000, 2000), max_pixels=1_000_000)


def test_exif_rotation_does_not_change_the_size() -> None:
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.new("RGB", (40, 10)).save(buffer, format="JPEG", exif=exif)
    assert measure_image(buffer.getvalue(), LIMIT) == (40, 10)


def test_pixel_budget_bounds_the_pixels_decoding_at_once() -> None:
    budget = Budget(100)
    peak = 0

    async def decode(pixels: int) -> None:
        nonlocal peak
        async with budget.hold(pixels):
            peak = max(peak, budget.in_use)
            await asyncio.sleep(0.01)

    async def main() -> None:
        # Six images of 40 pixels and one larger than the whole budget, which takes it all.
        await asyncio.gather(*(decode(40) for _ in range(6)), decode(10**9))

    asyncio.run(main())
    assert peak == 100 and budget.in_use == 0


def test_a_small_file_declaring_a_large_image_is_measured_off_the_loop() -> None:
    # 3,000 x 3,000 of one colour compresses to a few KB but decodes to 9 million pixels.
    buffer = io.BytesIO()
    Image.new("RGB", (3000, 3000)).save(buffer, format="GIF")
    data = buffer.getvalue()
    assert len(data) < 64 * 1024 and open_image(data, 10**8).size == (3000, 3000)
    budget = Budget(10_000_000)
    seen: list[int] = []

    class Fetcher:
        async def fetch(self, url: str, memory: object = None) -> bytes:
            return data

    async def main() -> None:
        async def watch() -> None:
            while not seen or seen[-1] == 0:
                seen.append(budget.in_use)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        outcome = await process_image(
            ImageTask(1, 0, "http://a.test/x"),
            Fetcher(),
            max_pixels=10**8,
            gpu_delay=(0, 0),
            stages=Stages(asyncio.Semaphore(1), asyncio.Semaphore(1), budget),
        )
        watcher.cancel()
        assert (outcome.width, outcome.height) == (3000, 3000)

    asyncio.run(main())
    assert 9_000_000 in seen  # it held its pixels while a thread decoded it


def threads_opening(monkeypatch: pytest.MonkeyPatch, data: bytes) -> list[str]:
    """Measure `data` as the worker does; returns the thread each header parse ran in."""
    threads: list[str] = []

    def recording_open(data: bytes, max_pixels: int) -> Any:
        threads.append(threading.current_thread().name)
        return open_image(data, max_pixels)

    monkeypatch.setattr(core.images.processing, "open_image", recording_open)

    class Fetcher:
        async def fetch(self, url: str, memory: object = None) -> bytes:
            return data

    async def main() -> None:
        outcome = await process_image(
            ImageTask(1, 0, "http://a.test/x"), Fetcher(), max_pixels=10**8, gpu_delay=(0, 0)
        )
        assert (outcome.width, outcome.height, outcome.error) == (8, 6, None)

    asyncio.run(main())
    return threads


def test_a_large_file_s_header_is_parsed_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pillow walks all 20 MB of comment blocks to find the image: 72 ms measured here, which
    # would stop every other image of the worker (and its reports) for as long.
    data = gif_with_comments(8, 6, 20 * 1024 * 1024)
    assert len(data) > 20_000_000
    (thread,) = threads_opening(monkeypatch, data)
    assert thread != threading.main_thread().name


def test_a_small_file_s_header_is_parsed_on_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A thread hop costs more than the parse of a small file.
    assert threads_opening(monkeypatch, encode("GIF", 8, 6)) == [threading.main_thread().name]


def outcome_of(data: bytes) -> str:
    try:
        return f"measured {measure_image(data, LIMIT)}"
    except (NotAnImageError, BrokenImageError) as exc:
        return f"{type(exc).__name__}: {exc}"


@pytest.mark.parametrize("lossless", [False, True])
def test_a_webp_is_checked_as_loading_it_would(
    lossless: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    buffer = io.BytesIO()
    picture = Image.open(io.BytesIO(encode_noisy("PNG", 320, 240)))
    picture.save(buffer, format="WEBP", lossless=lossless, quality=90)
    data = buffer.getvalue()
    assert measure_image(data, LIMIT) == (320, 240)
    for cut in (data[: len(data) // 2], data[: len(data) - 16], data[:40]):
        with pytest.raises(BrokenImageError, match=r"^cannot decode: "):
            measure_image(cut, LIMIT)
    # Bytes of the picture garbled, the RIFF container's sizes left whole: whatever libwebp
    # makes of them, the check says what loading the image into Pillow says.
    garbled = [
        data[:at] + bytes(b ^ 0x5A for b in data[at : at + 256]) + data[at + 256 :]
        for at in (40, 200, len(data) // 3, len(data) // 2, len(data) - 300)
    ]
    checked = [outcome_of(variant) for variant in garbled]
    monkeypatch.setattr(core.images.measure, "_decode_webp_frame", lambda image: False)
    assert [outcome_of(variant) for variant in garbled] == checked


def webp_with_pcd_marker_at_2048() -> bytes:
    """A whole WebP whose XMP chunk puts `PCD_` at byte 2048, where Pillow's PCD plugin, which
    checks no signature and comes before WebP's, looks for its own."""

    def with_xmp(xmp: bytes) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), (200, 10, 10)).save(buffer, format="WEBP", xmp=xmp)
        return buffer.getvalue()

    pad = b"x" * 4000
    at = 2048 - with_xmp(pad).index(pad)
    data = with_xmp(pad[:at] + b"PCD_" + pad[at + 4 :])
    assert data.index(b"PCD_") == 2048 and data[8:12] == b"WEBP"
    return data


def test_a_whole_webp_measures_where_pcd_would_have_claimed_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # From an attack review: the one outcome sniffing changes, for the better.
    data = webp_with_pcd_marker_at_2048()
    assert outcome_of(data) == "measured (16, 16)"
    monkeypatch.setattr(core.images.measure, "sniffed_format", lambda data: None)
    assert outcome_of(data).startswith("BrokenImageError")


HOSTILE_STARTS = [
    b"\xff\xd8\xff" + b"\x00" * 64,  # JPEG's magic, then nothing of a JPEG
    b"\xff\xd8\xff\xe0" + b"BM" * 40,
    b"\x89PNG\r\n\x1a\n" + b"\xff" * 64,
    b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 16,
    b"GIF89a" + b"\x01" * 10,
    b"GIF87a",
]


@pytest.mark.parametrize("data", HOSTILE_STARTS)
def test_sniffing_the_format_changes_no_outcome(
    data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    sniffed = outcome_of(data)
    monkeypatch.setattr(core.images.measure, "sniffed_format", lambda data: None)
    assert outcome_of(data) == sniffed
