"""Server-side request forgery guard: which addresses a download may connect to."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from core.settings import ENV_PREFIX

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")

# Ends every refusal: the README's examples run on loopback, and the message is all a newcomer
# sees of the guard. Short, since it is stored in each refused image's row.
ALLOW_PRIVATE_HINT = f"{ENV_PREFIX}ALLOW_PRIVATE_URLS=1 allows it"


class BlockedAddressError(OSError):
    """The download would connect to an address the guard refuses.

    Its message is the same for every address: when a host resolves to several refused
    addresses, aiohttp's happy-eyeballs connector raises one of their errors, keeping its type,
    only if all their messages agree (otherwise a plain OSError naming them all)."""

    def __init__(self, address: IPAddress) -> None:
        super().__init__(f"the address is not public ({ALLOW_PRIVATE_HINT})")
        self.address = address

    def __reduce__(self) -> tuple[type[BlockedAddressError], tuple[IPAddress]]:
        return BlockedAddressError, (self.address,)


def is_public_address(address: IPAddress) -> bool:
    """True only for globally routable unicast addresses. Loopback, private, shared, link-local,
    multicast, unspecified, documentation and reserved ranges are not public, nor is an IPv6
    address that embeds such an IPv4 address (mapped, 6to4, NAT64) or tunnels to one (Teredo)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.teredo is not None:
            return False
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64_PREFIX:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
    return (
        address.is_global
        and not address.is_multicast
        and not address.is_reserved
        and not address.is_unspecified
        and not address.is_loopback
        and not address.is_link_local
    )


@dataclass(frozen=True)
class AddressPolicy:
    """The guard's settings: private addresses allowed at all, and the allow-list.

    Allow-list entries are host names (`images.internal`), trusted whatever they resolve to,
    or networks (`10.20.0.0/16`), whose addresses are allowed whatever name led to them.
    """

    allow_private: bool = False
    trusted_hosts: frozenset[str] = frozenset()
    allowed_networks: tuple[IPNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def from_entries(cls, allow_private: bool, entries: Iterable[str]) -> AddressPolicy:
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(_normal_host(entry))
        return cls(allow_private, frozenset(hosts), tuple(networks))

    @property
    def guards(self) -> bool:
        return not self.allow_private

    def trusts_host(self, host: str) -> bool:
        return self.allow_private or _normal_host(host) in self.trusted_hosts

    def allows_address(self, address: IPAddress) -> bool:
        if self.allow_private or is_public_address(address):
            return True
        return any(address in network for network in self.allowed_networks)

    def check_address(self, text: str) -> None:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if not self.allows_address(address):
            raise BlockedAddressError(address)

    def socket_factory(self, addr_info: tuple[Any, ...]) -> socket.socket:
        """Make the socket for one connection attempt, refusing before it is connected anywhere:
        the address judged is the one about to be connected to, so DNS rebinding cannot slip by."""
        family, sock_type, proto, _canonname, sockaddr = addr_info
        self.check_address(sockaddr[0])
        return socket.socket(family=family, type=sock_type, proto=proto)


def _normal_host(host: str) -> str:
    return host.strip().lower().rstrip(".").strip("[]")
