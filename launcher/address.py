"""The head's node address: where Ray's servers listen and where a joining node finds it."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

NODE_ADDRESS_FLAG = "--node-ip-address"
# The launcher's own choice, before the operator's `RAY_START_ARGS`.
DEFAULT_NODE_ADDRESS = "127.0.0.1"


def node_address(ray_start_args: Sequence[str]) -> str:
    """The head's node address: `ray start` takes the last `--node-ip-address`, and the
    operator's arguments come after the launcher's loopback default."""
    address = DEFAULT_NODE_ADDRESS
    arguments = list(ray_start_args)
    for index, argument in enumerate(arguments):
        if argument.startswith(f"{NODE_ADDRESS_FLAG}="):
            address = argument.split("=", 1)[1]
        elif argument == NODE_ADDRESS_FLAG and index + 1 < len(arguments):
            address = arguments[index + 1]
    return address


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"  # a host name: only this one is known to be local
