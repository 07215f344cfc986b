"""Measuring an image held in memory: Pillow decodes it fully, so a truncated file is a failure."""

from __future__ import annotations

import io
import struct
import warnings

from PIL import Image, ImageFile, UnidentifiedImageError


class NotAnImageError(ValueError):
    """Pillow cannot identify the bytes as an image."""


class BrokenImageError(ValueError):
    """The bytes look like an image but do not decode (truncated, corrupt or too many pixels)."""


def measure_image(data: bytes, max_pixels: int) -> tuple[int, int]:
    """Return `(width, height)` of an encoded image, after decoding all of its first frame."""
    if not data:
        raise NotAnImageError("empty body")
    # Pillow's limit is process-wide; a decompression bomb must be an error, never a warning.
    Image.MAX_IMAGE_PIXELS = max_pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise BrokenImageError(f"{width}x{height} is over {max_pixels} pixels")
                image.load()
    except UnidentifiedImageError:
        raise NotAnImageError("not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BrokenImageError(f"too many pixels: {exc}") from None
    except BrokenImageError:
        raise
    # Pillow's format plugins signal malformed input with all of these, not one exception type.
    except (
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        struct.error,
        IndexError,
        KeyError,
        TypeError,
        ZeroDivisionError,
        MemoryError,
    ) as exc:
        raise BrokenImageError(f"cannot decode: {exc}") from None
    return width, height
