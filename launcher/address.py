"""Addresses and the `ray start` options the launcher needs to know of."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

# The launcher's own choice, before the operator's `RAY_START_ARGS`; `ray start` replaces it
# with the machine's routable address (`ray._private.services.resolve_ip_for_localhost`).
DEFAULT_NODE_ADDRESS = "127.0.0.1"


def flag_value(ray_start_args: Sequence[str], flag: str) -> str | None:
    """The value `ray start` takes for `flag` from these arguments (the last one given, as
    `--flag=value` or `--flag value`), or None when they do not give it."""
    value = None
    arguments = list(ray_start_args)
    for index, argument in enumerate(arguments):
        if argument.startswith(f"{flag}="):
            value = argument.split("=", 1)[1]
        elif argument == flag and index + 1 < len(arguments):
            value = arguments[index + 1]
    return value


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"  # a host name: only this one is known to be local
