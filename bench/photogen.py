"""Photo-like images for the photo workload (bench/photos.py), made with numpy: smooth gradients,
shapes and sensor-like noise, so that each format's size is a camera's, not a flat colour's;
and phone screenshots, flat UI areas with rows of text-like marks. Seeded: the same seed makes
the same pixels. Generated once and cached on disk (`photo_pool`), since a 12 MP photo takes
about a second to make and a HEIC of it more to encode."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import pillow_heif
from PIL import Image, ImageDraw

import core.images.measure  # noqa: F401  registers the HEIF plugin, which encoding HEIC needs

# Bump when what is generated changes: the cache is named after it.
GENERATOR = 1
FULL = (4032, 3024)  # a phone's 12 MP main camera


@dataclass(frozen=True)
class Kind:
    """One kind of file in the pool: `count` distinct files of one format and size."""

    name: str
    fmt: str  # Pillow's format name
    suffix: str
    size: tuple[int, int]
    count: int
    options: dict[str, Any] = field(default_factory=dict)  # Pillow's save options
    screenshot: bool = False


# 50 distinct files; a job repeats them, so these counts are the workload's mix: 40% 2 MP
# JPEGs, 20% 12 MP JPEGs (half progressive), 16% 3 MP WebP, 10% PNG screenshots, 6% HEIC,
# 8% AVIF; about 1.2 MB a file on average.
KINDS = (
    Kind("2mp", "JPEG", "jpeg", (1632, 1224), 20, {"quality": 80}),
    Kind("12mp", "JPEG", "jpeg", FULL, 5, {"quality": 93}),
    Kind("12mp-progressive", "JPEG", "jpeg", FULL, 5, {"quality": 93, "progressive": True}),
    Kind("3mp", "WEBP", "webp", (2000, 1500), 8, {"quality": 80}),
    Kind("screenshot", "PNG", "png", (1170, 2532), 5, screenshot=True),
    # x265's fastest preset: its default takes a minute to encode one 12 MP photo here.
    Kind("12mp", "HEIF", "heic", FULL, 3, {"quality": 50, "enc_params": {"preset": "ultrafast"}}),
    Kind("3mp", "AVIF", "avif", (2000, 1500), 4, {"quality": 70, "speed": 8}),
)


@dataclass(frozen=True)
class Photo:
    name: str
    fmt: str
    width: int
    height: int
    path: Path


def sensor_noise(rng: np.random.Generator) -> np.ndarray[Any, np.dtype[np.int16]]:
    """Noise for a full-size frame, cropped for smaller ones: grain a few pixels wide (what
    a phone's denoising leaves) and a little per-pixel, per-channel noise on top."""
    width, height = FULL
    coarse = rng.integers(0, 256, (height // 3, width // 3), dtype=np.uint8)
    grain = np.asarray(
        Image.fromarray(coarse).resize(FULL, Image.Resampling.BILINEAR), dtype=np.int16
    )
    fine = rng.integers(-5, 6, (height, width, 3), dtype=np.int16)
    noise: np.ndarray[Any, np.dtype[np.int16]] = (grain[:, :, None] - 128) // 5 + fine
    return noise


def photo(
    size: tuple[int, int], rng: np.random.Generator, noise: np.ndarray[Any, Any]
) -> Image.Image:
    """Smooth colour gradients, a dozen shapes, then the noise."""
    width, height = size
    corners = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    picture = Image.fromarray(corners).resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(picture)
    for _ in range(12):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = (x, y, x + int(rng.integers(width // 20, width // 3)),
               y + int(rng.integers(height // 20, height // 3)))  # fmt: skip
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse(box, fill=fill)
        else:
            draw.rectangle(box, fill=fill)
    top, left = (
        int(rng.integers(0, FULL[1] - height + 1)),
        int(rng.integers(0, FULL[0] - width + 1)),
    )
    pixels = np.asarray(picture, dtype=np.int16) + noise[top : top + height, left : left + width]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def screenshot(
    size: tuple[int, int], rng: np.random.Generator, noise: np.ndarray[Any, Any]
) -> Image.Image:
    """A phone screenshot: a flat background, a status bar, flat cards, some holding a photo,
    the rest rows of letter-sized marks in words, in greys as anti-aliased text is."""
    width, height = size
    background = tuple(int(c) for c in rng.integers(225, 256, 3))
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[:] = background
    pixels[:90] = rng.integers(0, 256, 3, dtype=np.uint8)  # status and title bars
    y = 120
    while y < height - 200:
        card = min(int(rng.integers(180, 420)), height - 30 - y)
        if rng.random() < 0.3:
            pixels[y : y + card, 30 : width - 30] = np.asarray(
                photo((width - 60, card), rng, noise)
            )
            y += card + 30
            continue
        pixels[y : y + card, 30 : width - 30] = rng.integers(200, 256, 3, dtype=np.uint8)
        for line in range(y + 24, y + card - 40, 44):
            # Letters 14 px wide and 28 px tall, of 2 x 2 px marks, a third of them inked.
            columns = int(rng.integers(20, max(21, (width - 120) // 16)))
            marks = rng.random((14, columns * 7)) < 0.33
            spaces = rng.random(columns) < 0.18  # gaps between words
            marks[:, np.repeat(spaces, 7)] = False
            region = pixels[line : line + 28, 60 : width - 60]
            glyphs = np.kron(marks, np.ones((2, 2), dtype=bool))[
                : region.shape[0], : region.shape[1]
            ]
            ink = rng.integers(20, 200, glyphs.shape, dtype=np.uint8)
            region[: glyphs.shape[0], : glyphs.shape[1]][glyphs] = ink[glyphs][:, None]
        y += card + 30
    return Image.fromarray(pixels)


def encode(image: Image.Image, kind: Kind) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kind.fmt, **kind.options)
    return buffer.getvalue()


def cache_dir(root: Path, seed: int) -> Path:
    """Named after all that decides the bytes: the generator, the seed, the encoders."""
    return root / f"g{GENERATOR}-seed{seed}-pillow{PIL.__version__}-heif{pillow_heif.__version__}"


def photo_pool(root: Path, seed: int) -> list[Photo]:
    """The pool's files, generated into `root` unless a run with the same seed and encoders
    has left them there."""
    directory = cache_dir(root, seed)
    manifest = directory / "manifest.json"
    if not manifest.exists():
        generate(directory, seed)
    return [
        Photo(name, fmt, width, height, directory / name)
        for name, fmt, width, height in json.loads(manifest.read_text())
    ]


def generate(directory: Path, seed: int) -> None:
    """Write the pool to `directory`, whole or not at all (a run stopped half way leaves no
    cache behind)."""
    partial = directory.with_name(directory.name + ".part")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    noise = sensor_noise(rng)
    entries = []
    for kind in KINDS:
        for n in range(kind.count):
            make = screenshot if kind.screenshot else photo
            image = make(kind.size, rng, noise)
            name = f"{kind.name}-{n:02d}.{kind.suffix}"
            (partial / name).write_bytes(encode(image, kind))
            entries.append((name, kind.fmt, *kind.size))
    (partial / "manifest.json").write_text(json.dumps(entries))
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
