"""A fast loopback image server for the benchmark: a few hundred JPEG/PNG/WebP images of varied
sizes, or the files of a directory (bench/photos.py's), held in memory, served by aiohttp. Run
as `python -m bench.imagehost PORT COUNT|DIR [DELAY_MS]`; with a delay it answers each image
that long after the request, as a CDN's time to first byte."""

from __future__ import annotations

import asyncio
import io
import random
import sys
from pathlib import Path

from aiohttp import web
from PIL import Image

FORMATS = [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp")]
CONTENT_TYPES = {
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".heic": "image/heic",
    ".avif": "image/avif",
}


def make_images(count: int, seed: int = 1) -> dict[str, tuple[bytes, str, int]]:
    """name -> (bytes, content type, perimeter)."""
    rng = random.Random(seed)
    images = {}
    for n in range(count):
        fmt, content_type = FORMATS[n % len(FORMATS)]
        width, height = rng.randint(16, 640), rng.randint(16, 480)
        buffer = io.BytesIO()
        color = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        Image.new("RGB", (width, height), color).save(buffer, format=fmt)
        images[f"{n}.{fmt.lower()}"] = (buffer.getvalue(), content_type, 2 * (width + height))
    return images


def read_directory(directory: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, content type) of the directory's images."""
    return {
        path.name: (path.read_bytes(), CONTENT_TYPES[path.suffix])
        for path in sorted(directory.iterdir())
        if path.suffix in CONTENT_TYPES
    }


def main() -> None:
    port, source = int(sys.argv[1]), sys.argv[2]
    delay = int(sys.argv[3]) / 1000 if len(sys.argv) > 3 else 0.0
    images = (
        {name: (data, kind) for name, (data, kind, _) in make_images(int(source)).items()}
        if source.isdigit()
        else read_directory(Path(source))
    )

    async def serve_image(request: web.Request) -> web.Response:
        if delay:
            await asyncio.sleep(delay)
        found = images.get(request.match_info["name"])
        if found is None:
            return web.Response(status=404)
        return web.Response(body=found[0], content_type=found[1])

    app = web.Application()
    app.router.add_get("/img/{name}", serve_image)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
