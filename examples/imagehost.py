"""The image server of the README's examples: `make images` serves them on 127.0.0.1:9000
until Ctrl-C. `/img/<name>` is one of a few generated images (any query string is ignored, so a
big job can ask for the same image under many URLs) and `/status/<code>` answers that code.
Run as `python -m examples.imagehost [PORT]`."""

from __future__ import annotations

import contextlib
import io
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from PIL import Image

PORT = 9000
# name: (Pillow format, content type, width, height, colour); the README shows these sizes.
IMAGES = {
    "red.jpg": ("JPEG", "image/jpeg", 640, 480, (200, 30, 30)),
    "green.png": ("PNG", "image/png", 300, 200, (30, 160, 60)),
    "blue.webp": ("WEBP", "image/webp", 128, 256, (30, 60, 200)),
}


def encode_images() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, content type)."""
    images = {}
    for name, (fmt, content_type, width, height, colour) in IMAGES.items():
        buffer = io.BytesIO()
        Image.new("RGB", (width, height), colour).save(buffer, format=fmt)
        images[name] = (buffer.getvalue(), content_type)
    return images


class ExampleServer(ThreadingHTTPServer):
    daemon_threads = True
    # A job's images arrive a hundred connections at once; the default backlog of 5 would
    # refuse some, and the service would count them as failed downloads to retry.
    request_queue_size = 256

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.images = encode_images()
        super().__init__((host, port), Handler)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ExampleServer

    def log_message(self, *args: object) -> None:
        pass  # one line per image would bury the terminal

    def do_GET(self) -> None:
        kind, _, rest = urlsplit(self.path).path.strip("/").partition("/")
        if kind == "img" and rest in self.server.images:
            body, content_type = self.server.images[rest]
            self._send(200, body, content_type)
        elif kind == "status" and rest.isascii() and rest.isdigit() and 200 <= int(rest) <= 599:
            # (isascii: "²²²" is digits to isdigit, not to int.) 204 and 304 carry no body.
            body = b"" if int(rest) in (204, 304) else f"HTTP {rest}\n".encode()
            self._send(int(rest), body, "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        if code not in (204, 304):  # RFC 9110: no Content-Length on a 204; a 304 has no body
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else PORT
    with ExampleServer(port) as server:
        print(f"serving the README's example images on http://127.0.0.1:{port}/", flush=True)
        # Ctrl-C is the way to stop it: no traceback for that.
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()


if __name__ == "__main__":
    main()
