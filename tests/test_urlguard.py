"""The SSRF decision, tested on addresses alone: no packet is sent anywhere."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import aiohappyeyeballs
import pytest

from core.images.urlguard import (
    ALLOW_PRIVATE_HINT,
    AddressPolicy,
    BlockedAddressError,
    is_public_address,
)
from core.settings import Settings

NOT_PUBLIC = [
    "127.0.0.1", "127.8.9.10", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254",
    "100.64.0.1", "0.0.0.0", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255",
    "192.0.2.1", "198.18.0.1", "::1", "::", "fc00::1", "fd12:3456::1", "fe80::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:a00:1::", "64:ff9b::a9fe:a9fe", "2001::1",
]  # fmt: skip
PUBLIC = ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("text", NOT_PUBLIC)
def test_non_public_addresses_are_refused(text: str) -> None:
    assert not is_public_address(ipaddress.ip_address(text))


@pytest.mark.parametrize("text", PUBLIC)
def test_public_addresses_are_allowed(text: str) -> None:
    assert is_public_address(ipaddress.ip_address(text))


def test_allow_list_of_networks_and_hosts() -> None:
    policy = AddressPolicy.from_entries(False, ["10.20.0.0/16", "Images.Internal."])
    assert policy.allows_address(ipaddress.ip_address("10.20.3.4"))
    assert not policy.allows_address(ipaddress.ip_address("10.21.0.1"))
    assert policy.trusts_host("images.internal")
    assert not policy.trusts_host("other.internal")


def test_allow_private_lifts_the_guard() -> None:
    policy = AddressPolicy(allow_private=True)
    assert policy.allows_address(ipaddress.ip_address("127.0.0.1"))


@pytest.mark.parametrize(
    "sockaddr", [("10.0.0.1", 80), ("169.254.169.254", 80), ("fc00::1", 80, 0, 0)]
)
def test_socket_factory_refuses_before_making_a_socket(sockaddr: tuple) -> None:
    family = socket.AF_INET6 if ":" in sockaddr[0] else socket.AF_INET
    with pytest.raises(BlockedAddressError) as refused:
        AddressPolicy().socket_factory((family, socket.SOCK_STREAM, 6, "", sockaddr))
    assert str(refused.value) == (
        "the address is not public (IMAGE_SERVICE_ALLOW_PRIVATE_URLS=1 allows it)"
    )


def test_the_setting_the_refusal_names_lifts_the_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    # The advice must work as written: the named variable, set as shown, is a real setting.
    assignment = ALLOW_PRIVATE_HINT.split()[0]
    name, _, value = assignment.partition("=")
    assert name == "IMAGE_SERVICE_ALLOW_PRIVATE_URLS"
    monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.allow_private_urls is True
    policy = AddressPolicy.from_entries(settings.allow_private_urls, settings.allowed_hosts)
    assert policy.allows_address(ipaddress.ip_address("127.0.0.1"))


def test_socket_factory_makes_an_unconnected_socket_for_public_addresses() -> None:
    sock = AddressPolicy().socket_factory(
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", 80))
    )
    try:
        with pytest.raises(OSError):
            sock.getpeername()  # created, never connected
    finally:
        sock.close()


def test_a_host_with_several_refused_addresses_still_raises_the_guard_s_error() -> None:
    """aiohttp's happy-eyeballs connector keeps an error's type only when the errors of all
    addresses read the same: the guard's do, whatever the address."""
    policy = AddressPolicy.from_entries(False, ())
    addresses = [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", 80)),
    ]

    async def connect() -> None:
        await aiohappyeyeballs.start_connection(addresses, socket_factory=policy.socket_factory)

    with pytest.raises(BlockedAddressError):
        asyncio.run(connect())
