"""Nothing a network `Topology` makes outlives its run: the live ones are removed at exit and
on SIGTERM or SIGHUP, and `sweep` removes what a run whose process is gone left behind (a
SIGKILLed pytest), found by the names: PREFIX, then the maker's process id."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

# Image job service faults: every namespace, veth and bridge of a topology starts with this,
# then the id of the process that made it (so a leftover names the run it came from).
PREFIX = "ijsf"
NETNS_DIR = Path("/run/netns")


class Removable(Protocol):
    def names(self) -> set[str]:
        """The namespaces and links it holds."""
        ...

    def remove(self) -> None: ...


_live: set[Removable] = set()
_previous_handlers: dict[int, Any] = {}
_at_exit: list[bool] = []


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def kill_processes_in(namespace: str) -> None:
    """SIGKILL every process inside `namespace`, by id (`ip netns pids` lists them)."""
    listed = ip("netns", "pids", namespace, check=False).stdout.split()
    for pid in (int(text) for text in listed if text.isdigit()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _gone(name: str) -> bool:
    """Whether the run that made `name` is over: its process is gone, or it is this process
    (whose things are held by live topologies, which `sweep` leaves alone)."""
    found = re.match(rf"{PREFIX}(\d+)", name)
    if found is None:
        return False  # not ours
    owner = int(found.group(1))
    if owner == os.getpid():
        return True
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def sweep() -> list[str]:
    """Remove the namespaces (and whatever runs in them), veths and bridges of runs whose
    process is gone; returns their names. A live run's are left alone."""
    held = set().union(*(topology.names() for topology in _live))
    removed = []
    namespaces = sorted(path.name for path in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []
    for namespace in namespaces:
        if namespace not in held and _gone(namespace):
            kill_processes_in(namespace)
            ip("netns", "del", namespace, check=False)
            removed.append(namespace)
    for link in json.loads(ip("-j", "link", "show").stdout or "[]"):
        name = str(link["ifname"])
        if name not in held and _gone(name):
            ip("link", "del", name, check=False)  # a veth's peer goes with it
            removed.append(name)
    return removed


def register(topology: Removable) -> None:
    """Remove `topology` at exit, or on SIGTERM or SIGHUP, unless `forget` came first."""
    if not _at_exit:
        atexit.register(_remove_all)
        _at_exit.append(True)
    # Handlers can be set from the main thread only; elsewhere atexit alone stands guard.
    if not _previous_handlers and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            _previous_handlers[signum] = signal.signal(signum, _on_signal)
    _live.add(topology)


def forget(topology: Removable) -> None:
    _live.discard(topology)


def _remove_all() -> None:
    for topology in list(_live):
        topology.remove()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Remove what is live, then die of the signal as before (or as the handler before says)."""
    _remove_all()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
