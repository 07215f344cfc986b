"""The launcher's "add a node" line: the command a node runs, with the token and an address
it can reach, and what to do when the head is on loopback; the `ray start` flags it reads."""

from __future__ import annotations

import pytest

from launcher.address import flag_value
from launcher.hint import join_hint

pytestmark = pytest.mark.timeout(30)


def test_a_reachable_head_gives_the_command_with_token_auth() -> None:
    assert join_hint("10.1.2.3", 6379) == (
        "add a node: RAY_AUTH_MODE=token ray start --address=10.1.2.3:6379 "
        "(with this head's token in ~/.ray/auth_token or RAY_AUTH_TOKEN)"
    )


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.1.1", "::1", "localhost"])
def test_a_loopback_head_says_how_other_machines_can_join(address: str) -> None:
    hint = join_hint(address, 16379)
    assert hint.startswith(
        f"add a node on this machine: RAY_AUTH_MODE=token ray start --address={address}:16379 "
    )
    assert "nodes on other machines cannot join" in hint
    assert "IMAGE_SERVICE_RAY_START_ARGS=--node-ip-address=ADDRESS" in hint


def test_a_flag_value_is_the_last_given() -> None:
    args = ("--port=1", "--ray-client-server-port", "2", "--ray-client-server-port=3")
    assert flag_value(args, "--ray-client-server-port") == "3"  # ray start takes the last
    assert flag_value(args[:3], "--ray-client-server-port") == "2"
    # A flag with no value after it gives none; ray start refuses it anyway.
    assert flag_value(("--ray-client-server-port",), "--ray-client-server-port") is None
    assert flag_value(args, "--dashboard-agent-listen-port") is None
    # A flag that only starts like another is not it.
    assert flag_value(("--port-retries=5",), "--port") is None
