"""`core.images.nodememory.NodeMemory`: one byte budget for a node's worker processes, held
first come first served, taken back from a holder that is killed."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.images.nodememory import (
    ENTRY,
    HEADER,
    Kind,
    NodeMemory,
    image_memory,
    node_budget,
    started_at,
)

pytestmark = pytest.mark.timeout(60)

MIB = 1024 * 1024

# Another process holding 800 bytes of decode until it is killed.
HOLDER = """
import asyncio, sys
from pathlib import Path
from core.images.nodememory import Kind, NodeMemory

async def main() -> None:
    node = NodeMemory(Path(sys.argv[1]), 1000)
    await node.take(Kind.DECODE, 800)
    print("held", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def contend(
    path: Path, rounds: int, spans: multiprocessing.Queue[tuple[float, float, int]]
) -> None:
    """One worker process: `rounds` decodes of 600 of 1000 bytes, each span and the bytes held
    on the node during it sent back."""

    async def main() -> None:
        node = NodeMemory(path, 1000)
        for _ in range(rounds):
            held = await node.take(Kind.DECODE, 600)
            start = time.monotonic()
            in_use = node.in_use
            await asyncio.sleep(0.001)
            spans.put((start, time.monotonic(), in_use))
            node.give_back(Kind.DECODE, held)
        node.close()

    asyncio.run(main())


async def hold(node: NodeMemory, name: str, amount: int, seconds: float, order: list[str]) -> None:
    held = await node.take(Kind.DECODE, amount)
    order.append(f"{name} in")
    await asyncio.sleep(seconds)
    order.append(f"{name} out")
    node.give_back(Kind.DECODE, held)


def test_two_processes_never_hold_more_than_the_budget_together(tmp_path: Path) -> None:
    """Two processes each ask, 30 times, for 600 of the node's 1000 bytes: never both at
    once, and neither waits for ever."""
    path, rounds = tmp_path / "memory", 30
    spans: multiprocessing.Queue[tuple[float, float, int]] = multiprocessing.Queue()
    workers = [
        multiprocessing.Process(target=contend, args=(path, rounds, spans)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    got = [spans.get(timeout=20) for _ in range(2 * rounds)]
    for worker in workers:
        worker.join(10)
        assert worker.exitcode == 0
    assert {in_use for *_, in_use in got} == {600}  # one holder at a time, as counted
    ordered = sorted(got)
    assert all(ordered[n][1] <= ordered[n + 1][0] for n in range(len(ordered) - 1))
    with_nothing_held = NodeMemory(path, 1000)
    assert with_nothing_held.in_use == 0
    with_nothing_held.close()


@pytest.mark.parametrize("reap", [True, False], ids=["reaped", "zombie"])
def test_a_holder_killed_mid_hold_has_its_bytes_taken_back(tmp_path: Path, reap: bool) -> None:
    path = tmp_path / "memory"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"

        async def main() -> None:
            node = NodeMemory(path, 1000)
            assert node.in_use == 800
            waiting = asyncio.create_task(node.take(Kind.DECODE, 500))
            await asyncio.sleep(0.2)
            assert not waiting.done()  # the other process holds 800 of 1000
            holder.send_signal(signal.SIGKILL)
            if reap:
                holder.wait()  # else a zombie until the finally: dead all the same
            assert await asyncio.wait_for(waiting, 5) == 500
            assert node.in_use == 500
            node.close()

        asyncio.run(main())
    finally:
        holder.kill()
        holder.wait()


def test_a_large_request_is_not_passed_by_smaller_ones_from_another_process(
    tmp_path: Path,
) -> None:
    """Two holders on one file (two opens, as two processes). Here holds 60 of 100; there
    asks for all 100; then here asks for 30, which would fit: it waits for there's turn."""
    here, there = NodeMemory(tmp_path / "m", 100), NodeMemory(tmp_path / "m", 100)
    order: list[str] = []

    async def main() -> None:
        first = asyncio.create_task(hold(here, "small 1", 60, 0.05, order))
        await asyncio.sleep(0.01)
        large = asyncio.create_task(hold(there, "large", 100, 0, order))
        await asyncio.sleep(0.01)
        await asyncio.gather(first, large, hold(here, "small 2", 30, 0, order))

    asyncio.run(main())
    assert order == [
        "small 1 in",
        "small 1 out",
        "large in",
        "large out",
        "small 2 in",
        "small 2 out",
    ]


def test_requests_of_one_process_are_served_in_the_order_they_ask(tmp_path: Path) -> None:
    node = NodeMemory(tmp_path / "m", 100)
    order: list[str] = []

    async def main() -> None:
        first = asyncio.create_task(hold(node, "small 1", 30, 0.05, order))
        await asyncio.sleep(0.01)
        large = asyncio.create_task(hold(node, "large", 100, 0.01, order))
        await asyncio.sleep(0.01)
        await asyncio.gather(
            first, large, hold(node, "small 2", 30, 0, order), hold(node, "small 3", 30, 0, order)
        )

    asyncio.run(main())
    assert order[:4] == ["small 1 in", "small 1 out", "large in", "large out"], order
    assert node.in_use == 0
    node.close()


def test_an_oversized_request_runs_alone_and_holds_what_its_kind_may(tmp_path: Path) -> None:
    """A body larger than the half of the budget bodies may take waits until nothing at all is
    held, and holds that half; a decode larger than the budget runs beside no other decode."""
    node = NodeMemory(tmp_path / "m", 100)

    async def main() -> list[str]:
        order: list[str] = []
        small = await node.take(Kind.BODY, 10)
        oversized = asyncio.create_task(node.take(Kind.BODY, 5 * MIB))
        await asyncio.sleep(0.02)
        assert not oversized.done()
        node.give_back(Kind.BODY, small)
        assert await asyncio.wait_for(oversized, 5) == 50
        later = asyncio.create_task(node.take(Kind.BODY, 1))
        await asyncio.sleep(0.02)
        assert not later.done()  # nothing passes it while it holds
        node.give_back(Kind.BODY, 50)
        node.give_back(Kind.BODY, await asyncio.wait_for(later, 5))

        decode = await node.take(Kind.DECODE, 30)
        huge = asyncio.create_task(node.take(Kind.DECODE, 10**9))
        await asyncio.sleep(0.02)
        assert not huge.done()
        order.append(f"in use {node.in_use}")
        node.give_back(Kind.DECODE, decode)
        order.append(f"huge holds {await asyncio.wait_for(huge, 5)}")
        node.give_back(Kind.DECODE, 100)
        order.append(f"in use {node.in_use}")
        return order

    assert asyncio.run(main()) == ["in use 30", "huge holds 100", "in use 0"]
    node.close()


def test_images_holding_their_bodies_always_get_to_decode(tmp_path: Path) -> None:
    """Forty images each hold a body of 40 of 100 bytes, then ask for 60 more to decode.
    Were bodies let in up to the whole budget, two bodies (80) would leave no room for either
    decode, and both would wait for ever; bodies take at most half, so all finish."""
    node = NodeMemory(tmp_path / "m", 100)
    peak = 0

    async def one_image() -> None:
        nonlocal peak
        async with image_memory(node) as memory:
            assert memory is not None
            await memory.hold_body(40)
            await asyncio.sleep(0.001)
            async with memory.decoding(60):
                peak = max(peak, node.in_use)
                await asyncio.sleep(0.001)

    async def main() -> None:
        await asyncio.wait_for(asyncio.gather(*(one_image() for _ in range(40))), 20)

    asyncio.run(main())
    assert (peak, node.in_use) == (100, 0)
    node.close()


def test_the_default_budget_is_128_mib_a_cpu_within_an_eighth_of_the_memory_and_bounds(
    tmp_path: Path,
) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        4194304 kB\nMemFree:  100 kB\n")  # 4 GiB
    assert node_budget(0, meminfo, cpus=2) == 256 * MIB
    assert node_budget(0, meminfo, cpus=8) == 512 * MIB  # an eighth of 4 GiB
    meminfo.write_text("MemTotal:       67108864 kB\n")  # 64 GiB
    assert node_budget(0, meminfo, cpus=2) == 256 * MIB
    assert node_budget(0, meminfo, cpus=64) == 1024 * MIB
    meminfo.write_text("MemTotal:         262144 kB\n")  # 256 MiB
    assert node_budget(0, meminfo, cpus=2) == 64 * MIB
    assert node_budget(0, tmp_path / "absent", cpus=4) == 512 * MIB
    assert node_budget(0, tmp_path / "absent", cpus=16) == 1024 * MIB
    assert node_budget(2 * MIB, meminfo) == 2 * MIB  # a setting is taken as it is


def test_a_process_gone_has_no_start_time() -> None:
    assert started_at(os.getpid()) == started_at(os.getpid()) is not None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert started_at(dead.pid) is None


def test_a_holder_killed_half_way_through_a_change_leaves_no_bytes_behind(
    tmp_path: Path,
) -> None:
    """A holder killed between its change of the totals and of its own entry: the totals say
    130 bytes, the entries 100 (the live holder) and 30 (the dead one). Taking back the dead
    one's counts the totals again from the entries."""
    path = tmp_path / "m"
    alive = NodeMemory(path, 1000)
    asyncio.run(alive.take(Kind.BODY, 100))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with path.open("r+b") as file:
        header = list(HEADER.unpack(file.read(HEADER.size)))
        header[2] += 30 + 50  # its 30 bytes, and 50 its entry never got
        header[6] += 1  # its slot
        file.seek(0)
        file.write(HEADER.pack(*header))
        file.seek(HEADER.size + (header[6] - 1) * ENTRY.size)
        file.write(ENTRY.pack(gone.pid, 12345, 30, 0, 0, 0, 0, 0))
    assert alive.in_use == 180
    after = NodeMemory(path, 1000)  # a new holder looks for the dead first
    assert (after.in_use, alive.in_use) == (100, 100)
    after.close()
    alive.close()


def test_a_decode_gives_back_its_bytes_and_the_bodys_together(tmp_path: Path) -> None:
    async def scenario() -> None:
        node = NodeMemory(tmp_path / "memory", 10_000)
        async with image_memory(node) as image:
            assert image is not None
            await image.hold_body(1_000)
            async with image.decoding(3_000):
                assert (node.in_use, node.bodies) == (4_000, 1_000)
            # The body served its decode: both are back before the image is done.
            assert (node.in_use, image.body) == (0, 0)
        assert node.in_use == 0
        node.close()

    asyncio.run(scenario())


def test_a_body_is_held_at_once_only_when_none_waits_before_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        node = NodeMemory(tmp_path / "memory", 10_000)  # bodies may hold 5,000
        async with image_memory(node) as first, image_memory(node) as second:
            assert first is not None and second is not None
            assert first.try_hold_body(4_000)
            assert not second.try_hold_body(2_000)  # does not fit: nothing held
            assert (node.in_use, second.body) == (4_000, 0)
            waiting = asyncio.create_task(second.hold_body(2_000))
            await asyncio.sleep(0.01)
            # One waits for room: a body that would fit does not pass it.
            async with image_memory(node) as third:
                assert third is not None
                assert not third.try_hold_body(500)
                first.drop_body()
                await asyncio.wait_for(waiting, 5)
                assert third.try_hold_body(500)
                assert node.in_use == 2_500
        assert node.in_use == 0
        node.close()

    asyncio.run(scenario())


def test_a_body_held_at_once_does_not_pass_a_waiter_woken_but_not_yet_run(
    tmp_path: Path,
) -> None:
    # From an attack review: between one turn's end and the next waiter's wake-up, the turn's
    # lock says it is free while a request still waits.
    async def scenario() -> None:
        node = NodeMemory(tmp_path / "memory", 10_000)  # bodies may hold 5,000
        async with (
            image_memory(node) as first,
            image_memory(node) as second,
            image_memory(node) as third,
            image_memory(node) as fourth,
        ):
            assert first and second and third and fourth
            await first.hold_body(4_000)
            second_waits = asyncio.create_task(second.hold_body(3_000))
            await asyncio.sleep(0.01)
            third_waits = asyncio.create_task(third.hold_body(2_500))
            await asyncio.sleep(0.01)
            first.drop_body()  # second gets its bytes and hands the turn to third
            await asyncio.sleep(0)  # this request comes in the same turn of the loop
            assert second_waits.done() and not third_waits.done()
            passed = fourth.try_hold_body(1_500)
            second.drop_body()
            await asyncio.wait_for(third_waits, 5)
            assert not passed, "a 1,500-byte body passed the 2,500-byte one waiting before it"
        assert node.in_use == 0
        node.close()

    asyncio.run(scenario())
