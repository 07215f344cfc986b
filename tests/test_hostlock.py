"""`core.images.hostlock.HostLock`: one holder at a time among the processes of a host, and a holder
that is killed lets go."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from core.images.hostlock import HostLock

pytestmark = pytest.mark.timeout(30)

# Another process holding the lock until it is killed.
HOLDER = """
import asyncio, sys
from pathlib import Path
from core.images.hostlock import HostLock

async def main() -> None:
    async with HostLock(Path(sys.argv[1])).held():
        print("held", flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""


async def hold(lock: HostLock, name: str, seconds: float, order: list[str]) -> None:
    async with lock.held():
        order.append(f"{name} in")
        await asyncio.sleep(seconds)
        order.append(f"{name} out")


def test_one_holder_at_a_time_across_separate_opens_of_the_file(tmp_path: Path) -> None:
    # Two instances open the file apart, as two processes do: flock tells them apart.
    first, second = HostLock(tmp_path / "decode.lock"), HostLock(tmp_path / "decode.lock")
    order: list[str] = []

    async def main() -> None:
        held = asyncio.create_task(hold(first, "a", 0.05, order))
        await asyncio.sleep(0)  # a takes the lock before b asks
        await asyncio.gather(held, hold(second, "b", 0, order), hold(first, "c", 0, order))

    asyncio.run(main())
    assert order[:2] == ["a in", "a out"]
    assert sorted(order[2:]) == ["b in", "b out", "c in", "c out"]
    assert order[2][0] == order[3][0]  # b and c one after the other, never together


def test_a_holder_killed_lets_the_lock_go(tmp_path: Path) -> None:
    path = tmp_path / "decode.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"

        async def main() -> None:
            order: list[str] = []
            waiting = asyncio.create_task(hold(HostLock(path), "here", 0, order))
            await asyncio.sleep(0.2)
            assert order == []  # the other process holds it
            holder.send_signal(signal.SIGKILL)
            await asyncio.wait_for(waiting, 5)
            assert order == ["here in", "here out"]

        asyncio.run(main())
    finally:
        holder.kill()
        holder.wait()
