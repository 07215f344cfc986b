"""The TCP sockets a set of processes listens on, read from /proc (Linux): what a test checks
against the README's table of ports."""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass

LISTEN = "0A"  # the state column of /proc/net/tcp for a listening socket


@dataclass(frozen=True)
class ListeningSocket:
    pid: int
    command: str
    address: str  # as `ss` shows it: 127.0.0.1, 0.0.0.0, ::, ::ffff:127.0.0.1
    port: int

    @property
    def loopback_only(self) -> bool:
        address = ipaddress.ip_address(self.address)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.is_loopback


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    # The kernel writes each 32-bit word in host (little-endian) order.
    words = b"".join(raw[index : index + 4][::-1] for index in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def _listening_inodes() -> dict[int, tuple[str, int]]:
    found: dict[int, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            next(handle)  # the header
            for line in handle:
                fields = line.split()
                if fields[3] == LISTEN:
                    hex_address, hex_port = fields[1].split(":")
                    found[int(fields[9])] = (_address(hex_address), int(hex_port, 16))
    return found


def listening_sockets(pids: Iterable[int]) -> list[ListeningSocket]:
    """Every TCP socket these processes listen on (a process gone meanwhile has none)."""
    inodes = _listening_inodes()
    found: list[ListeningSocket] = []
    for pid in pids:
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/comm") as handle:
                command = handle.read().strip()
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inode = int(target[len("socket:[") : -1])
                        if inode in inodes:
                            found.append(ListeningSocket(pid, command, *inodes[inode]))
    return sorted(set(found), key=lambda sock: (sock.command, sock.port))
