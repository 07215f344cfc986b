"""Measuring an image held in memory, and making sure it is whole: a truncated or corrupt
file is a failure, not a size read off an intact header."""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
from collections.abc import Iterator

import pillow_heif
from PIL import Image, ImageFile, UnidentifiedImageError

# A decompression bomb must be an error, never a warning that lets the decode go on.
warnings.simplefilter("error", Image.DecompressionBombWarning)
ImageFile.LOAD_TRUNCATED_IMAGES = False
# HEIC/HEIF, what phones save, through libheif; AVIF is Pillow's own (its wheels bundle libavif
# since 11.3). Only the primary image is read: no thumbnails (with them, pillow-heif's `draft`
# would decode a thumbnail in the full image's place), no depth or auxiliary images.
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)

# The major brands of an ISO base media file (its first box, `ftyp`) that hold a HEIF or AVIF
# image: such a file that does not open is a broken image (its header truncated, say), not
# something other than an image. A video's brands (`isom`, `mp42`, ...) are not among them.
HEIF_BRANDS = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis"}
)


class NotAnImageError(ValueError):
    """Pillow cannot identify the bytes as an image."""


class BrokenImageError(ValueError):
    """The bytes look like an image but do not decode (truncated, corrupt or too many pixels)."""


# Pillow's format plugins signal malformed input with all of these, not one exception type.
DECODE_ERRORS = (
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
)


@contextlib.contextmanager
def _as_image_errors() -> Iterator[None]:
    """Whatever Pillow raises for bad input, as NotAnImageError or BrokenImageError."""
    try:
        yield
    except UnidentifiedImageError:
        raise NotAnImageError("not an image") from None
    except (NotAnImageError, BrokenImageError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BrokenImageError(f"too many pixels: {exc}") from None
    except DECODE_ERRORS as exc:
        # libheif ends its messages with a newline.
        raise BrokenImageError(f"cannot decode: {str(exc).strip()}") from None


def sniffed_format(data: bytes) -> str | None:
    """The Pillow format the first bytes name, for the formats most images come in; None for
    the rest."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    return None


def _open(data: bytes) -> Image.Image:
    """`Image.open`, asking the plugin the first bytes name before every other: Pillow asks
    each registered plugin in turn (42 us an image on average here, 25 us sniffed). The others
    are asked too when that one declines. One difference: a plugin that checks no signature
    (Pillow's PCD claims any file with `PCD_` at byte 2048, and comes before WebP's) no longer
    takes a whole image of the format the file starts as, which now measures."""
    sniffed = sniffed_format(data)
    if sniffed is not None:
        with contextlib.suppress(UnidentifiedImageError):
            return Image.open(io.BytesIO(data), formats=[sniffed])
    return Image.open(io.BytesIO(data))


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """The image with its header read (its size known), its content not yet checked; pass it
    to `check_image`, which closes it."""
    if not data:
        raise NotAnImageError("empty body")
    Image.MAX_IMAGE_PIXELS = max_pixels
    with _as_image_errors():
        try:
            image = _open(data)
        except UnidentifiedImageError:
            if is_heif(data):
                raise BrokenImageError(
                    "cannot decode: a HEIF/AVIF file that does not open (truncated or corrupt)"
                ) from None
            raise
        width, height = image.size
        if width * height > max_pixels:
            image.close()
            raise BrokenImageError(f"{width}x{height} is over {max_pixels} pixels")
    return image


def is_heif(data: bytes) -> bool:
    """Whether the bytes begin as a HEIF or AVIF image does: an `ftyp` box of one of their
    brands."""
    return data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS


# Bytes a pixel takes in Pillow's memory, by mode: every mode not named takes 4 (RGB is kept
# as 4 bytes a pixel too).
PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}


def decoded_bytes(image: Image.Image) -> int:
    """The memory decoding an opened image may take, from its header: its pixels at full size
    (a JPEG decoded at reduced scale takes less, but a progressive one holds coefficients for
    the whole image) times the bytes of a pixel of its mode."""
    width, height = image.size
    return width * height * PIXEL_BYTES.get(image.mode, 4)


def check_image(image: Image.Image) -> tuple[int, int]:
    """`(width, height)` of an opened image once its whole content has checked out."""
    with image, _as_image_errors():
        size = image.size  # before the check: a JPEG's draft mode shrinks it
        check_whole(image)
    return size


def measure_image(data: bytes, max_pixels: int) -> tuple[int, int]:
    """Return `(width, height)` of an encoded image once its whole content has checked out."""
    return check_image(open_image(data, max_pixels))


def _decode_webp_frame(image: Image.Image) -> bool:
    """Decode a WebP image's first frame with the libwebp decoder Pillow opened it with, the
    frame left unused: `load()` decodes the same way, then copies the frame twice to make it
    Pillow's (436 against 573 us per WebP of the bench's images here). False if this Pillow
    holds no such decoder: the caller loads the image instead."""
    decoder = getattr(image, "_decoder", None)
    if decoder is None or not hasattr(decoder, "get_next"):
        return False
    if decoder.get_next() is None:  # libwebp's failure: Pillow raises on it, or answers None
        raise BrokenImageError("cannot decode: the WebP frame does not decode")
    return True


def check_whole(image: Image.Image) -> None:
    """Read the image's whole stream, as cheaply as the format allows (measured here, per
    image of up to 640x480: PNG 0.03 ms to verify against 0.7 ms to decode; JPEG 0.12 ms at
    1/8 scale against 0.25 ms at full size).

    PNG: every chunk's CRC up to IEND, which catches truncation and corruption without
    inflating pixels. JPEG: the entropy-coded stream decoded at reduced scale. WebP: its first
    frame decoded in full by libwebp, not copied into a Pillow image. Anything else (HEIF and
    AVIF among them): the first frame decoded in full.
    """
    if image.format == "PNG":
        image.verify()
        return
    if image.format == "WEBP" and _decode_webp_frame(image):
        return
    if image.format == "JPEG":
        image.draft(None, (1, 1))
    if image.format == "HEIF":
        # pillow-heif raises RuntimeError for libheif's errors other than bad input (an
        # unsupported codec configuration, say); caught here alone, where it can only come
        # from the file, not as a decode error everywhere, where it would hide our bugs.
        try:
            image.load()
        except RuntimeError as exc:
            raise BrokenImageError(f"cannot decode: {str(exc).strip()}") from None
        return
    image.load()
