"""harness/netns.py and netclean.py, which the network fault suite stands on: a topology up
and down leaving nothing, a cut that is a silent drop and heals, a shaped link's delay, a
frozen process tree, and the sweep of a crashed run's leftovers. Root only; about 5 s. Traffic
stays on the test's bridge. The nfnetlink_queue parsing of harness/netdelay.py runs anywhere."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator

import pytest

from harness import netclean, netdelay, netns
from harness.procs import descendants

needs_root = pytest.mark.skipif(netns.unavailable() is not None, reason=str(netns.unavailable()))


@pytest.fixture
def topology() -> Iterator[netns.Topology]:
    made = netns.Topology(("a", "b")).create()
    try:
        yield made
    finally:
        made.remove()


def listening_in(topology: netns.Topology, role: str) -> socket.socket:
    def listen() -> socket.socket:
        server = socket.socket()
        server.bind((topology[role].address, 0))
        server.listen()
        return server

    return netns.call_in(topology[role].name, listen)


def connect_seconds(topology: netns.Topology, role: str, address: tuple[str, int]) -> float:
    """How long a TCP connect from inside `role` to `address` takes (a timeout raises)."""

    def connect() -> float:
        started = time.monotonic()
        with socket.create_connection(address, timeout=1.5):
            return time.monotonic() - started

    return netns.call_in(topology[role].name, connect)


def names() -> set[str]:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {word.split("@")[0].rstrip(":") for word in (links + spaces).split()}


@needs_root
def test_a_topology_gives_each_namespace_its_address_and_removes_everything(
    topology: netns.Topology,
) -> None:
    assert topology.subnet is not None
    assert [topology[role].address for role in ("a", "b")] == [
        str(topology.subnet.network_address + 2),
        str(topology.subnet.network_address + 3),
    ]
    server = listening_in(topology, "b")
    try:
        assert connect_seconds(topology, "a", server.getsockname()) < 1
        with socket.create_connection(server.getsockname(), timeout=1):  # from the host
            pass
        # Nothing inside has a route but the bridge's /24.
        routes = subprocess.run(
            netns.in_namespace(topology["a"].name, ["ip", "-4", "route"]),
            capture_output=True,
            text=True,
        ).stdout
        assert routes.split()[0] == str(topology.subnet) and "default" not in routes
    finally:
        server.close()
    made = {topology.bridge, *(n.name for n in topology.namespaces.values())}
    assert made <= names()
    topology.remove()
    assert not made & names()


@needs_root
def test_a_cut_drops_in_silence_and_restore_heals_it(topology: netns.Topology) -> None:
    server = listening_in(topology, "b")
    try:
        topology.cut("a", "b")
        with pytest.raises(TimeoutError):  # no RST, no ICMP: the connect just waits
            connect_seconds(topology, "a", server.getsockname())
        # Only that pair: the host still reaches b.
        with socket.create_connection(server.getsockname(), timeout=1):
            pass
        topology.restore("a", "b")
        assert connect_seconds(topology, "a", server.getsockname()) < 1
        topology.cut("b")  # everyone
        with pytest.raises(TimeoutError):
            socket.create_connection(server.getsockname(), timeout=1)
        topology.heal()
        assert topology.cuts == set()
        assert connect_seconds(topology, "a", server.getsockname()) < 1
    finally:
        server.close()


@needs_root
def test_a_shaped_link_delays_what_the_namespace_sends(topology: netns.Topology) -> None:
    server = listening_in(topology, "b")
    try:
        topology.shape("b", delay_ms=150, loss_pct=0)
        # The SYN-ACK comes from b: one way delayed.
        assert 0.14 < connect_seconds(topology, "a", server.getsockname()) < 0.6
        topology.unshape("b")
        assert connect_seconds(topology, "a", server.getsockname()) < 0.1
    finally:
        server.close()


@needs_root
def test_freeze_stops_a_group_and_its_children_in_their_own_sessions(
    topology: netns.Topology,
) -> None:
    """As PostgreSQL's backends, the child leads a session of its own: a signal to the
    parent's group alone would leave it running. `remove` ends both, one by its group, the
    other as a process inside the namespace."""
    parent = topology.run_in("a", ["sh", "-c", "setsid sleep 60 & exec sleep 61"])
    deadline = time.monotonic() + 5
    while len(descendants([parent.pid])) < 2:
        assert time.monotonic() < deadline, "the child did not start"
        time.sleep(0.01)
    [child] = descendants([parent.pid]) - {parent.pid}
    assert os.getpgid(child) != parent.pid
    topology.freeze(parent.pid)
    assert (_state(parent.pid), _state(child)) == ("T", "T")
    topology.thaw(parent.pid)
    assert (_state(parent.pid), _state(child)) == ("S", "S")
    topology.remove()
    assert parent.poll() == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{child}") and _state(child) != "Z":
        assert time.monotonic() < deadline, "the child outlived the topology"
        time.sleep(0.01)


def _state(pid: int) -> str:
    """The process's state letter, once settled (a signal takes a moment to land)."""
    deadline = time.monotonic() + 5
    while True:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return "gone"
        if state in ("T", "S", "Z") or time.monotonic() > deadline:
            return state
        time.sleep(0.01)


@needs_root
def test_sweep_removes_a_dead_runs_leftovers_only() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # its id is free now: a run that made namespaces and crashed
    leftover, live = f"{netclean.PREFIX}{dead.pid}-x", f"{netclean.PREFIX}1-x"  # pid 1 is alive
    for name in (leftover, live):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert leftover in netclean.sweep()
        assert leftover not in names() and live in names()
    finally:
        for name in (leftover, live):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_netdelay_reads_packet_ids_from_a_queue_message() -> None:
    def packet(packet_id: int) -> bytes:
        header = netdelay.attribute(netdelay.NFQA_PACKET_HDR, struct.pack("!IHB", packet_id, 8, 3))
        other = netdelay.attribute(9, b"\x01\x02\x03")  # an attribute of no interest, padded
        return netdelay.message(netdelay.NFQNL_MSG_PACKET, 0, other + header)

    assert list(netdelay.packet_ids(packet(7) + packet(2**32 - 1))) == [7, 2**32 - 1]
    acknowledged = struct.pack("=IHHII", 36, netdelay.NLMSG_ERROR, 0, 0, 0) + bytes(20)
    assert list(netdelay.packet_ids(acknowledged)) == []
    refused = struct.pack("=IHHIIi", 36, netdelay.NLMSG_ERROR, 0, 0, 0, -1) + bytes(16)
    with pytest.raises(OSError, match="EPERM"):
        list(netdelay.packet_ids(refused))
