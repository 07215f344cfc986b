from __future__ import annotations

import io

import pytest
from PIL import Image

from core.measure import BrokenImageError, NotAnImageError, measure_image
from tests.imageserver import encode

LIMIT = 10_000_000


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_measures_every_common_format(fmt: str) -> None:
    assert measure_image(encode(fmt, 123, 45), LIMIT) == (123, 45)


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
