"""The downloader against the loopback image server, without Ray."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from core.images.fetch import Downloader, FetchLimits, ImageDownloadError, redact_url
from core.images.urlguard import AddressPolicy
from core.settings import Settings
from harness.imageserver import ImageServer

FAST = FetchLimits.from_settings(Settings(retry_backoff=0.01, max_image_bytes=100_000))


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    running = ImageServer().start()
    yield running
    running.stop()


def fetch(url: str, policy: AddressPolicy, limits: FetchLimits = FAST) -> bytes:
    async def run() -> bytes:
        downloader = Downloader(limits, policy)
        try:
            return await downloader.fetch(url)
        finally:
            await downloader.close()

    return asyncio.run(run())


OPEN = AddressPolicy(allow_private=True)


def test_downloads_the_bytes(server: ImageServer) -> None:
    assert fetch(server.url("img/green.png"), OPEN) == server.files["green.png"][0]


def test_byte_cap(server: ImageServer) -> None:
    with pytest.raises(ImageDownloadError, match="larger than 1000 bytes"):
        fetch(
            server.url("img/red.jpg"),
            OPEN,
            FetchLimits.from_settings(Settings(max_image_bytes=1000)),
        )


def test_guard_refuses_loopback_and_sends_nothing(server: ImageServer) -> None:
    for url in (
        server.url("img/green.png?guarded"),
        f"http://localhost:{server.port}/img/green.png?g2",
    ):
        with pytest.raises(ImageDownloadError, match="refused"):
            fetch(url, AddressPolicy())
    assert server.hits["/img/green.png?guarded"] == 0 and server.hits["/img/green.png?g2"] == 0


def test_the_refusal_names_the_host_and_the_setting_that_lifts_it(server: ImageServer) -> None:
    # The message is stored in every refused image's row: one short sentence a newcomer
    # running the README's examples on loopback can act on.
    with pytest.raises(ImageDownloadError) as refused:
        fetch(server.url("img/green.png?named"), AddressPolicy())
    assert str(refused.value) == (
        "refused: 127.0.0.1 resolves to an address that is not public"
        " (IMAGE_SERVICE_ALLOW_PRIVATE_URLS=1 allows it)"
    )


def test_guard_refuses_a_redirect_into_loopback(server: ImageServer) -> None:
    # The first hop is allowed through a trusted host name; the redirect target is a literal IP.
    policy = AddressPolicy.from_entries(False, ["localhost"])
    target = server.url("img/blue.webp?via-redirect")
    url = f"http://localhost:{server.port}/goto?to={target}"
    with pytest.raises(ImageDownloadError, match="refused"):
        fetch(url, policy)
    assert server.hits[f"/goto?to={target}"] == 1
    assert server.hits["/img/blue.webp?via-redirect"] == 0


def test_connection_refused_is_retried_then_reported() -> None:
    with pytest.raises(ImageDownloadError, match="connection failed"):
        fetch("http://127.0.0.1:9/x.png", OPEN)


def test_redact_url_drops_credentials_and_query() -> None:
    assert redact_url("https://user:pw@a.test:8/p/x.jpg?sig=secret#f") == "https://a.test:8/p/x.jpg"


@pytest.mark.parametrize("location", ["http://[x/", "//[::1", "http://a]/b"])
def test_a_redirect_to_an_unparsable_url_is_a_download_failure(
    server: ImageServer, location: str
) -> None:
    # urljoin raises ValueError ("Invalid IPv6 URL"): it must not escape as a bug.
    with pytest.raises(ImageDownloadError, match="redirected to a Location that is not a URL"):
        fetch(server.url(f"goto?to={quote(location, safe='')}"), OPEN)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("redirect", "redirected to a Location that is not valid UTF-8"),
        ("scheme", "redirected to a non-http URL: ftp://a/\u00e9" + "x" * 88 + "..."),
    ],
)
def test_what_an_origin_says_is_quoted_valid_and_short(
    server: ImageServer, kind: str, message: str
) -> None:
    with pytest.raises(ImageDownloadError) as raised:
        fetch(server.url(f"garbled/{kind}"), OPEN)
    assert str(raised.value) == message
