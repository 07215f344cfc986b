"""Network namespaces for the fault tests: a bridge in the root namespace with an address of
its own, namespaces on it each with one veth and one address, and the faults a network makes:
a silent cut between two addresses, a slow and lossy link, a frozen process group.

Needs root, iproute2 and iptables (`make netns-tools`). `Topology.remove` takes everything
down; `netclean.register` makes sure it happens however the run ends."""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from harness import netclean
from harness.netclean import NETNS_DIR, PREFIX, ip
from harness.procs import freeze, thaw

T = TypeVar("T")

# The /24s a topology may take, the first free one: private, and nowhere else on this machine.
SUBNETS = tuple(ipaddress.IPv4Network(f"10.213.{n}.0/24") for n in range(16))
# The veth's end inside each namespace (names are per namespace, so every one is eth0).
DEVICE = "eth0"
CHAIN_IN, CHAIN_OUT, CHAIN_SHAPE = f"{PREFIX}-in", f"{PREFIX}-out", f"{PREFIX}-shape"
NFQUEUE = 0
CLONE_NEWNET = 0x40000000
ROOT = Path(__file__).resolve().parent.parent


def unavailable() -> str | None:
    """Why this machine cannot build a topology, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "tc", "iptables", "setpriv") if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)}: `make netns-tools` installs them"
    return None


def in_namespace(namespace: str | None, argv: Sequence[str]) -> list[str]:
    """`argv` run inside `namespace` (`ip netns exec` execs it: same process, no fork), or as
    it is for None."""
    return list(argv) if namespace is None else ["ip", "netns", "exec", namespace, *argv]


def call_in(namespace: str, function: Callable[[], T]) -> T:
    """`function()` called on a thread of this process that has entered `namespace`: sockets
    it creates live there, and so do threads it starts (they inherit it). For a server in this
    process (the test image server, whose request counts the tests read) at a namespace's
    address. setns(CLONE_NEWNET) moves the calling thread only; this one ends after."""
    outcome: list[Any] = []

    def enter_and_call() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(NETNS_DIR / namespace, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                error = ctypes.get_errno()
                raise OSError(error, f"setns({namespace}): {os.strerror(error)}")
        finally:
            os.close(fd)
        outcome.append(function())

    failure: list[BaseException] = []

    def run() -> None:
        try:
            enter_and_call()
        except BaseException as exc:  # re-raised on the caller's thread below
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"in-{namespace}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Namespace:
    role: str
    name: str  # `ip netns` name
    address: str  # its address on the bridge
    veth: str  # the veth's end on the bridge, in the root namespace


def _free_subnet() -> ipaddress.IPv4Network:
    """The first of SUBNETS that no interface here has an address in."""
    shown = json.loads(ip("-j", "-4", "addr", "show").stdout or "[]")
    taken = [
        ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}").network
        for link in shown
        for info in link.get("addr_info", [])
    ]
    for subnet in SUBNETS:
        if not any(subnet.overlaps(other) for other in taken):
            return subnet
    raise RuntimeError(f"every subnet of {SUBNETS[0]}..{SUBNETS[-1]} is in use here")


@dataclass(eq=False)  # compared and hashed by identity: netclean's live set holds them
class Topology:
    """A bridge with an address (this process reaches the namespaces through it) and one
    namespace per role, each with an address on the bridge, loopback up, and no route
    anywhere but the bridge's /24: what runs inside can reach nothing else."""

    roles: Sequence[str]
    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}")
    subnet: ipaddress.IPv4Network | None = None
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    # Faults in force, so that `heal` and `remove` undo them whatever a test did.
    cuts: set[tuple[str, str | None]] = field(default_factory=set)
    shaped: dict[str, subprocess.Popen[bytes] | None] = field(default_factory=dict)
    frozen: dict[int, list[int]] = field(default_factory=dict)  # group: the ids stopped
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    shaper: str = ""  # how `shape` works on this kernel: "netem" or "nfqueue"

    @property
    def bridge(self) -> str:
        return f"{self.tag}br"

    @property
    def host_address(self) -> str:
        """This (the root) namespace's address on the bridge: where the test process is."""
        assert self.subnet is not None
        return str(self.subnet.network_address + 1)

    def __getitem__(self, role: str) -> Namespace:
        return self.namespaces[role]

    def names(self) -> set[str]:
        """Its namespaces and links (netclean's sweep leaves them alone while it lives)."""
        made = {self.bridge}
        for namespace in self.namespaces.values():
            made |= {namespace.name, namespace.veth}
        return made

    def create(self) -> Topology:
        netclean.sweep()
        netclean.register(self)
        try:
            self._build()
        except BaseException:
            self.remove()
            raise
        return self

    def _build(self) -> None:
        self.subnet = _free_subnet()
        prefix = self.subnet.prefixlen
        ip("link", "add", self.bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        ip("addr", "add", f"{self.host_address}/{prefix}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for number, role in enumerate(self.roles):
            namespace = Namespace(
                role=role,
                name=f"{self.tag}-{role}",
                address=str(self.subnet.network_address + 2 + number),
                veth=f"{self.tag}v{number}",
            )
            self.namespaces[role] = namespace
            ip("netns", "add", namespace.name)
            ip("link", "add", namespace.veth, "type", "veth", "peer", "name", DEVICE,
                "netns", namespace.name)  # fmt: skip
            ip("link", "set", namespace.veth, "master", self.bridge, "up")
            ip("-n", namespace.name, "link", "set", "lo", "up")
            ip("-n", namespace.name, "addr", "add", f"{namespace.address}/{prefix}", "dev", DEVICE)
            ip("-n", namespace.name, "link", "set", DEVICE, "up")
            self._iptables(role, "-N", CHAIN_IN)
            self._iptables(role, "-N", CHAIN_OUT)
            self._iptables(role, "-N", CHAIN_SHAPE)
            self._iptables(role, "-A", "INPUT", "-j", CHAIN_IN)
            self._iptables(role, "-A", "OUTPUT", "-j", CHAIN_OUT)
            self._iptables(role, "-A", "OUTPUT", "-j", CHAIN_SHAPE)
        for namespace in self.namespaces.values():
            # What this process sends to a namespace must go over the bridge, never out of the
            # machine by the default route: checked, not assumed.
            route = json.loads(ip("-j", "route", "get", namespace.address).stdout)
            if route[0].get("dev") != self.bridge:
                raise RuntimeError(f"{namespace.address} is routed via {route}, not the bridge")

    def run_in(
        self,
        role: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        **popen: Any,
    ) -> subprocess.Popen[bytes]:
        """`argv` started inside the role's namespace, in a session (process group) of its own,
        stopped with the topology if still running."""
        process = subprocess.Popen(
            in_namespace(self[role].name, argv),
            env=None if env is None else dict(env),
            start_new_session=True,
            **popen,
        )
        self.started.append(process)
        return process

    # ---- faults ----------------------------------------------------------------------------

    def cut(self, role: str, peer: str | None = None) -> None:
        """Every packet between the role's namespace and `peer` (a role, "host" for this
        process, None for everyone) dropped in silence, both ways: a partition. No RST, no
        ICMP, the link stays up, so TCP on both sides learns of it only by its own timeouts,
        as across a real network that fails (`ip link set down` would instead fail sends at
        once on the cut side)."""
        for rule in self._cut_rules(peer):
            self._iptables(role, "-A", *rule)
        self.cuts.add((role, peer))

    def restore(self, role: str, peer: str | None = None) -> None:
        for rule in self._cut_rules(peer):
            self._iptables(role, "-D", *rule, check=False)
        self.cuts.discard((role, peer))

    def _cut_rules(self, peer: str | None) -> list[list[str]]:
        if peer is None:
            return [[CHAIN_IN, "-i", DEVICE, "-j", "DROP"], [CHAIN_OUT, "-o", DEVICE, "-j", "DROP"]]
        address = self.host_address if peer == "host" else self[peer].address
        return [
            [CHAIN_IN, "-i", DEVICE, "-s", address, "-j", "DROP"],
            [CHAIN_OUT, "-o", DEVICE, "-d", address, "-j", "DROP"],
        ]

    def shape(self, role: str, delay_ms: int, loss_pct: float) -> None:
        """Everything the role's namespace sends over its link waits `delay_ms` and is lost
        with `loss_pct` percent chance: `tc netem` on its veth where the kernel has netem;
        else iptables' random drop and NFQUEUE to `harness.netdelay`, which holds each packet
        `delay_ms` (this machine's kernel has no sch_netem)."""
        self.unshape(role)
        if _netem_works(self[role].name):
            self.shaper = "netem"
            self._tc(role, "qdisc", "replace", "dev", DEVICE, "root", "netem",
                     "delay", f"{delay_ms}ms", "loss", f"{loss_pct}%")  # fmt: skip
            self.shaped[role] = None
            return
        self.shaper = "nfqueue"
        delayer = None
        if delay_ms > 0:
            delayer = self.run_in(
                role,
                [sys.executable, "-m", "harness.netdelay", str(NFQUEUE), str(delay_ms)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
            )
            assert delayer.stdout is not None
            if delayer.stdout.readline().strip() != b"READY":
                raise RuntimeError(f"harness.netdelay did not start ({delayer.wait()})")
        self.shaped[role] = delayer
        if loss_pct > 0:
            self._iptables(role, "-A", CHAIN_SHAPE, "-o", DEVICE, "-m", "statistic",
                           "--mode", "random", "--probability", str(loss_pct / 100),
                           "-j", "DROP")  # fmt: skip
        if delayer is not None:
            # Bypass: with no program bound to the queue, packets pass instead of dropping.
            self._iptables(role, "-A", CHAIN_SHAPE, "-o", DEVICE, "-j", "NFQUEUE",
                           "--queue-num", str(NFQUEUE), "--queue-bypass")  # fmt: skip

    def unshape(self, role: str) -> None:
        if role not in self.shaped:
            return
        delayer = self.shaped.pop(role)
        self._tc(role, "qdisc", "del", "dev", DEVICE, "root", check=False)
        self._iptables(role, "-F", CHAIN_SHAPE, check=False)
        if delayer is not None:
            _stop_group(delayer)

    def freeze(self, pgid: int) -> None:
        self.frozen[pgid] = []  # thawed by `heal` even if the freeze fails half way
        self.frozen[pgid] = freeze(pgid)

    def thaw(self, pgid: int) -> None:
        thaw(pgid, self.frozen.pop(pgid, []))

    def heal(self) -> None:
        """Undo every fault in force: cuts restored, links unshaped, groups thawed."""
        for role, peer in list(self.cuts):
            self.restore(role, peer)
        for role in list(self.shaped):
            self.unshape(role)
        for pgid in list(self.frozen):
            self.thaw(pgid)

    def remove(self) -> None:
        """Take everything down, each step whatever the others did: faults, the processes
        started here (by process group), whatever still runs in the namespaces (by id), the
        veths, the bridge, the namespaces. Safe to call twice."""
        with contextlib.suppress(Exception):
            self.heal()
        for process in self.started:
            _stop_group(process)
        for namespace in self.namespaces.values():
            if (NETNS_DIR / namespace.name).exists():
                netclean.kill_processes_in(namespace.name)
            ip("link", "del", namespace.veth, check=False)
            ip("netns", "del", namespace.name, check=False)
        ip("link", "del", self.bridge, check=False)
        netclean.forget(self)

    def _iptables(self, role: str, *rule: str, check: bool = True) -> None:
        done = subprocess.run(
            in_namespace(self[role].name, ["iptables", "-w", *rule]),
            capture_output=True,
            text=True,
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"iptables {' '.join(rule)} in {role}: {done.stderr.strip()}")

    def _tc(self, role: str, *args: str, check: bool = True) -> None:
        done = ip("netns", "exec", self[role].name, "tc", *args, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"tc {' '.join(args)} in {role}: {done.stderr.strip()}")


def _netem_works(namespace: str) -> bool:
    """Whether the kernel has sch_netem: tried on the namespace's device and taken off again."""
    tried = ip("netns", "exec", namespace, "tc", "qdisc", "add", "dev", DEVICE, "root",
                "netem", "delay", "0ms", check=False)  # fmt: skip
    if tried.returncode != 0:
        return False
    ip("netns", "exec", namespace, "tc", "qdisc", "del", "dev", DEVICE, "root", check=False)
    return True


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()
