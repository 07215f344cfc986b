"""A fast loopback image server for the benchmark: a few hundred JPEG/PNG/WebP images of varied
sizes, held in memory, served by aiohttp. Run as `python -m bench.imagehost PORT COUNT
[DELAY_MS]`; with a delay it answers each image that long after the request, as a CDN's time
to first byte."""

from __future__ import annotations

import asyncio
import io
import random
import sys

from aiohttp import web
from PIL import Image

FORMATS = [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp")]


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


def main() -> None:
    port, count = int(sys.argv[1]), int(sys.argv[2])
    delay = int(sys.argv[3]) / 1000 if len(sys.argv) > 3 else 0.0
    images = make_images(count)

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
