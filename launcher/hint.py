"""What the launcher tells an operator at startup: the command that adds a node."""

from __future__ import annotations

from core.settings import ENV_PREFIX
from launcher.address import is_loopback


def join_hint(address: str, ray_port: int) -> str:
    """The command a node runs to join this head, with what it needs beside it. A head on a
    loopback address can be joined from this machine only: say how to give it another."""
    command = f"RAY_AUTH_MODE=token ray start --address={address}:{ray_port}"
    token = "with this head's token in ~/.ray/auth_token or RAY_AUTH_TOKEN"
    if not is_loopback(address):
        return f"add a node: {command} ({token})"
    return (
        f"add a node on this machine: {command} ({token}); the head's address is {address}, "
        "so nodes on other machines cannot join: restart with "
        f"{ENV_PREFIX}RAY_START_ARGS=--node-ip-address=ADDRESS, an address of this machine "
        "they reach"
    )
