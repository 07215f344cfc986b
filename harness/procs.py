"""CPU time and resident memory of a process tree, read from /proc (Linux); a process tree
frozen and thawed."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable, Sequence

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields after the command name


def descendants(roots: Iterable[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    found: set[int] = set()
    stack = [root for root in roots if _stat_fields(root) is not None]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, []))
    return found


def alive(pids: Iterable[int]) -> set[int]:
    """Those of the processes that still run (a zombie, dead and not yet reaped, does not)."""
    return {pid for pid in pids if (fields := _stat_fields(pid)) is not None and fields[0] != "Z"}


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system time of the processes and of their reaped children."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += sum(int(value) for value in fields[11:15])
    return total / TICKS


def rss_bytes(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[21]) * PAGE
    return total


# Process roles by what their command line says (Ray names its workers `ray::<Actor>`).
ROLES = (
    ("image workers", "ray::ImageWorker"),
    ("tracker", "ray::JobTracker"),
    ("serve replica", "ray::ServeReplica"),
    ("serve proxy", "ray::ProxyActor"),
    ("origin", "bench.imagehost"),
)


def role_of(pid: int) -> str:
    """The process's role in the service, `ray system` for the rest of Ray's processes."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    for role, marker in ROLES:
        if marker in command:
            return role
    return "ray system"


def cpu_by_role(pids: Iterable[int]) -> dict[str, float]:
    """CPU seconds of the processes, summed by role."""
    totals: dict[str, float] = {}
    for pid in pids:
        role = role_of(pid)
        totals[role] = totals.get(role, 0.0) + cpu_seconds([pid])
    return totals


def freeze(pgid: int) -> list[int]:
    """SIGSTOP to the process group `pgid`, then to each descendant of its leader, by id: the
    processes keep their sockets open and answer nothing. Descendants one by one, since they
    may lead groups of their own: PostgreSQL's backends call setsid(), so a signal to the
    postmaster's group alone stops only the postmaster, and every open connection goes on
    answering. The group first, so that no child is forked after the list is read. Returns
    the ids stopped, for `thaw`."""
    os.killpg(pgid, signal.SIGSTOP)
    stopped = sorted(descendants([pgid]))
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    return stopped


def thaw(pgid: int, stopped: Sequence[int] = ()) -> None:
    """SIGCONT to what `freeze` stopped."""
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGCONT)
