"""An image server on 127.0.0.1 (or another address of this machine) for the tests: generated
images in several formats and sizes, broken files, error codes, redirects, and failures that
pass after a few tries. It counts the requests per path and logs who asked what, when."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image

# Registers the HEIF plugin, which encoding HEIC needs, with the options the service reads with.
import core.images.measure  # noqa: F401

SIZES = {  # name: (format, width, height)
    "red.jpg": ("JPEG", 640, 480),
    "green.png": ("PNG", 300, 200),
    "blue.webp": ("WEBP", 128, 256),
    "tiny.gif": ("GIF", 1, 1),
    "wide.bmp": ("BMP", 1000, 10),
    "tall.tiff": ("TIFF", 17, 333),
    "photo.heic": ("HEIF", 320, 240),
    "photo.avif": ("AVIF", 200, 150),
}
CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "HEIF": "image/heic",
    "AVIF": "image/avif",
}


def encode(fmt: str, width: int, height: int, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format=fmt)
    return buffer.getvalue()


def encode_noisy(fmt: str, width: int, height: int) -> bytes:
    """A gradient under noise: unlike one colour, the coded picture outweighs the header, so
    a cut at half a file lands in the picture's data, as a download cut short does."""
    gradient = Image.linear_gradient("L").resize((width, height))
    noise = Image.effect_noise((width, height), 48)
    buffer = io.BytesIO()
    Image.merge("RGB", (gradient, noise, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT))).save(
        buffer, format=fmt
    )
    return buffer.getvalue()


def heif_declaring(fmt: str, width: int, height: int) -> bytes:
    """A small HEIF or AVIF image whose `ispe` box (its size in the header) claims `width` x
    `height`: a decompression bomb in a phone's format."""
    data = bytearray(encode(fmt, 64, 64))
    ispe = data.index(b"ispe")  # then version and flags (4 bytes), width and height (4 each)
    data[ispe + 8 : ispe + 16] = struct.pack(">II", width, height)
    return bytes(data)


def encode_mode(mode: str, fmt: str, width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format=fmt)
    return buffer.getvalue()


def animated_gif(width: int, height: int) -> bytes:
    frames = [Image.new("P", (width, height), color) for color in (1, 2, 3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    return buffer.getvalue()


def exif_rotated_jpeg(width: int, height: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated by 90 degrees; the stored size stays width x height
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size: a decompression bomb's calling card."""
    data = bytearray(encode("PNG", 1, 1))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(data[ihdr : ihdr + 17]))
    return bytes(data)


def gif_with_comments(width: int, height: int, size: int) -> bytes:
    """A valid GIF of about `size` bytes, nearly all of them comment blocks before the image:
    Pillow reads every block to find its size, so its header is slow to parse."""
    plain = bytearray(encode_mode("P", "GIF", width, height))
    flags = plain[10]  # the logical screen descriptor: is a global colour table there?
    table = 3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0
    head, rest = plain[: 13 + table], plain[13 + table :]
    # One comment extension of 16 sub-blocks of 255 bytes each, then its terminator.
    comment = b"\x21\xfe" + (b"\xff" + b"c" * 255) * 16 + b"\x00"
    return bytes(head + comment * max(0, (size - len(plain)) // len(comment)) + rest)


def peer_pid(client_port: int, server_port: int) -> int | None:
    """The process on this machine that holds the client end of the connection
    127.0.0.1:client_port -> :server_port, read from /proc."""
    # A closed connection that used the same client port lingers in the table (TIME_WAIT,
    # inode 0), so the row must be the live one to this server, not the first port match.
    local, remote = f":{client_port:04X}", f":{server_port:04X}"
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in rows:
                fields = row.split()
                if (
                    len(fields) > 9
                    and fields[1].endswith(local)
                    and fields[2].endswith(remote)
                    and fields[9] != "0"
                ):
                    inode = fields[9]
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == target
                   for fd in os.listdir(f"/proc/{pid}/fd")):  # fmt: skip
                return int(pid)
        except OSError:
            continue
    return None


# Answers whose header bytes are not UTF-8: a redirect and a plain 200 with the image.
GARBLED_REDIRECT = (
    b"HTTP/1.1 302 Found\r\nLocation: /img/\xff\xfe\xc3(\r\nContent-Length: 0\r\n\r\n"
)
# And a valid one that no message should quote in full: 5,000 characters to another scheme.
LONG_SCHEME_REDIRECT = (
    b"HTTP/1.1 301 Moved\r\nLocation: ftp://a/\xc3\xa9" + b"x" * 5_000
    + b"\r\nContent-Length: 0\r\n\r\n"
)  # fmt: skip


def redone(before: dict[int, int], after: dict[int, int]) -> set[int]:
    """The images (`ImageServer.tagged_hits` before and after a crash) downloaded before it
    and again after it. A download retried before the crash is not a redo; one the crash cut
    short before it reached the server is not seen."""
    return {index for index, count in after.items() if 0 < before.get(index, 0) < count}


def perimeter(name: str) -> int:
    _fmt, width, height = SIZES[name]
    return 2 * (width + height)


@dataclass(frozen=True)
class Request:
    at: float  # time.time() when it arrived
    method: str
    path: str
    client: str  # the asking address: which node (of which cluster) sent it


class Server(ThreadingHTTPServer):
    # The image workers open a hundred connections at once; the default backlog of 5 would
    # refuse some, and their retries would count as second downloads.
    request_queue_size = 256


@dataclass
class ImageServer:
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    callbacks: dict[str, list[Any]] = field(default_factory=dict)  # bodies POSTed, by key
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0
    host: str = "127.0.0.1"
    log: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name, (fmt, width, height) in SIZES.items():
            self.files[name] = (encode(fmt, width, height), CONTENT_TYPES[fmt])
        png = self.files["green.png"][0]
        self.files["truncated.png"] = (png[: len(png) // 2], "image/png")
        jpeg = encode("JPEG", 800, 600)
        self.files["truncated.jpg"] = (jpeg[: len(jpeg) // 3], "image/jpeg")
        self.files["page.jpg"] = (b"<html><body>not an image</body></html>", "image/jpeg")
        self.files["empty.png"] = (b"", "image/png")
        self.files["png-named.jpg"] = (self.files["green.png"][0], "image/jpeg")
        self.files["bomb.png"] = (png_declaring(200_000, 200_000), "image/png")
        self.files["animated.gif"] = (animated_gif(30, 20), "image/gif")
        self.files["cmyk.jpg"] = (encode_mode("CMYK", "JPEG", 50, 40), "image/jpeg")
        self.files["deep.png"] = (encode_mode("I;16", "PNG", 33, 22), "image/png")
        self.files["rotated.jpg"] = (exif_rotated_jpeg(40, 10), "image/jpeg")
        for fmt, suffix in (("HEIF", "heic"), ("AVIF", "avif")):
            photo = encode_noisy(fmt, 320, 240)
            self.files[f"truncated.{suffix}"] = (photo[: len(photo) // 2], CONTENT_TYPES[fmt])
        self.files["bomb.heic"] = (heif_declaring("HEIF", 20_000, 20_000), "image/heic")

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}/{path.lstrip('/')}"

    def requests_for(self, prefix: str) -> list[Request]:
        """The requests whose path starts with `prefix`, in the order they came."""
        with self.lock:
            return [request for request in self.log if request.path.startswith(prefix)]

    def tagged_hits(self, tag: str) -> dict[int, int]:
        """Requests so far for each path ending in `?{tag}=<n>`, by n: a test's images tagged
        with their index in its job."""
        with self.lock:
            hits = dict(self.hits)
        counts: dict[int, int] = {}
        for path, count in hits.items():
            _, found, index = path.partition(f"?{tag}=")
            if found and index.isdigit():
                counts[int(index)] = count
        return counts

    def start(self) -> ImageServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                hits = server.count(self)
                parts = urlsplit(self.path).path.strip("/").split("/")
                if parts[0] == "img" and len(parts) == 2 and parts[1] in server.files:
                    body, content_type = server.files[parts[1]]
                    return self._send(200, body, content_type)
                if parts[0] == "slow" and len(parts) == 3:
                    # /slow/<milliseconds>/<name>: the image, after a pause
                    time.sleep(int(parts[1]) / 1000)
                    body, content_type = server.files[parts[2]]
                    return self._send(200, body, content_type)
                if parts[0] == "status" and len(parts) == 2:
                    return self._send(int(parts[1]), b"error", "text/plain")
                if parts[0] == "flaky" and len(parts) == 4:
                    # /flaky/<key>/<failures>/<name>: answers 503 <failures> times, then the image
                    if hits <= int(parts[2]):
                        return self._send(503, b"busy", "text/plain")
                    body, content_type = server.files[parts[3]]
                    return self._send(200, body, content_type)
                if parts[0] == "trickle":
                    # Headers at once, then one byte every half second: a slow-loris server.
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    for _ in range(40):
                        time.sleep(0.5)
                        self.wfile.write(b"\x89")
                        self.wfile.flush()
                    return None
                if parts[0] == "garbled" and len(parts) == 2:
                    # /garbled/<kind>: a raw answer whose header bytes are not UTF-8
                    raw = {"redirect": GARBLED_REDIRECT, "scheme": LONG_SCHEME_REDIRECT}
                    if parts[1] in raw:
                        self.wfile.write(raw[parts[1]])
                        return None
                    body, _type = server.files["red.jpg"]
                    self.wfile.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: image/\xff\xfe\r\nX-Note: \xc3(\r\n"
                        + f"Content-Length: {len(body)}\r\n\r\n".encode()
                        + body
                    )
                    return None
                if parts[0] == "deadly":
                    # Kills the process that asked: an image whose processing kills its worker.
                    pid = peer_pid(self.client_address[1], server.port)
                    if pid is None or pid == os.getpid():
                        # Said out loud: a test failing on this names its cause.
                        return self._send(500, b"deadly: requester not found", "text/plain")
                    os.kill(pid, signal.SIGKILL)
                    return None
                if parts[0] == "silent":
                    time.sleep(20)  # accepts the connection, never answers
                    return None
                if parts[0] == "goto":
                    # /goto?to=<absolute url>: one redirect to anywhere, another host included
                    return self._redirect(parse_qs(urlsplit(self.path).query)["to"][0])
                if parts[0] == "redirect" and len(parts) == 3:
                    # /redirect/<hops>/<name>: a chain of <hops> redirects ending at the image
                    hops = int(parts[1])
                    target = f"/img/{parts[2]}" if hops <= 1 else f"/redirect/{hops - 1}/{parts[2]}"
                    return self._redirect(target)
                return self._send(404, b"not found", "text/plain")

            def do_POST(self) -> None:
                # /callback/<failures>/<key>[?answer=<code>]: answers 503 (or <code>)
                # <failures> times, then takes the body
                hits = server.count(self)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                split = urlsplit(self.path)
                parts = split.path.strip("/").split("/")
                if parts[0] != "callback" or len(parts) != 3:
                    return self._send(404, b"not found", "text/plain")
                if hits <= int(parts[1]):
                    answer = int(parse_qs(split.query).get("answer", ["503"])[0])
                    return self._send(answer, b"not now", "text/plain")
                with server.lock:
                    server.callbacks.setdefault(parts[2], []).append(json.loads(body))
                return self._send(204, b"", "text/plain")

            def _redirect(self, location: str) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = Server((self.host, 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        # A short poll: `stop` (shutdown) waits for it, at every test's teardown.
        threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def count(self, request: BaseHTTPRequestHandler) -> int:
        """Count and log one request; returns how many times its path has been asked."""
        with self.lock:
            self.hits[request.path] += 1
            self.log.append(
                Request(time.time(), request.command, request.path, request.client_address[0])
            )
            return self.hits[request.path]

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


if __name__ == "__main__":
    import sys
    import time

    srv = ImageServer().start()
    print(srv.port, flush=True)
    sys.stdout.flush()
    while True:
        time.sleep(3600)
