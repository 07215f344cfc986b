"""The bytes a node's image workers hold at once, downloaded bodies and images being decoded,
bounded by one budget that all the node's worker processes share through a small accounting
file. No Ray here.

The file holds the node's totals and one entry per holder (a `NodeMemory`, one per worker
process): its pid and start time, the bytes it holds, and the ticket of its first waiting
request of each kind. Every change is made under an exclusive `flock` of the file (a few
microseconds: no Ray call on the per-image path). A holder that dies, even by SIGKILL, leaves
its entry behind; the others see its pid gone (or reused: the start time differs) and take
its bytes back.

Bodies and decodes are asked for apart, because an image asks for its decode while it holds its
body: were both asked for alike, the budget could fill with bodies whose images all wait to
decode, for ever. So bodies may take at most `body_room`, half the budget: once the decodes
running end, the bodies held leave room for the first decode waiting, whatever the bodies do.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import mmap
import os
import struct
import time
from collections.abc import AsyncIterator, Iterator
from enum import IntEnum
from pathlib import Path

# Each header field and each entry field is a signed 64-bit integer.
HEADER = struct.Struct("<8q")  # magic, next ticket, held, decoding, waiting x 2, slots used, 0
ENTRY = struct.Struct("<8q")  # pid, start, bytes held, of them decoding, (ticket, wanted) x 2
TWO = struct.Struct("<2q")  # bytes held and, of them, decoding: in the header and in each entry
MAGIC = 0x31_6D_65_6D_67_61_6D_69  # the file's format; a file of another is started afresh
ENTRIES = 1024  # holders at once on one node: a worker process each (one per CPU)
FILE_BYTES = HEADER.size + ENTRIES * ENTRY.size  # 64 KiB
# How often a waiting process looks at the file again. A release in the same process wakes its
# waiter at once; one in another process is seen at the next look, each a few microseconds.
POLL_SECONDS = 0.002
# How often a waiting process looks for holders that died: reading /proc for each holder.
RECLAIM_SECONDS = 0.05
MIB = 1024 * 1024
# The default budget (`node_budget`): this share of the node's memory, within these bounds.
DEFAULT_SHARE = 8
DEFAULT_CEILING = 1024 * MIB
DEFAULT_FLOOR = 64 * MIB
DEFAULT_PER_CPU = 128 * MIB


class Kind(IntEnum):
    """What a request holds: a downloaded body, or an image being decoded."""

    BODY = 0
    DECODE = 1


def node_budget(
    configured: int, meminfo: Path = Path("/proc/meminfo"), cpus: int | None = None
) -> int:
    """The node's budget in bytes: `configured`, or when it is 0, 128 MiB per CPU but at most
    an eighth of the node's physical memory (MemTotal), between 64 MiB and 1 GiB. A CPU
    decodes one image at a time: 128 MiB holds a 12 MP photo's pixels and the bodies downloaded
    ahead of it; more only grows the heap (1 GiB gave a phone-photo job no more throughput than
    256 MiB on 2 CPUs, and 200 MiB more RSS)."""
    if configured:
        return configured
    by_cpus = DEFAULT_PER_CPU * (cpus or os.cpu_count() or 1)
    try:
        for line in meminfo.read_text().splitlines():
            name, _, value = line.partition(":")
            if name == "MemTotal":
                total = int(value.split()[0]) * 1024  # given in kB
                share = min(by_cpus, total // DEFAULT_SHARE)
                return max(DEFAULT_FLOOR, min(DEFAULT_CEILING, share))
    except (OSError, ValueError, IndexError):
        pass
    return max(DEFAULT_FLOOR, min(DEFAULT_CEILING, by_cpus))


def started_at(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc here: only the pid can be asked about
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0
    fields = stat[stat.rindex(b")") + 2 :].split()  # the name, in parentheses, may hold blanks
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


class Flock:
    """An exclusive `flock` of a file, held in a `with` block (a class, not a generator: the
    lock is taken twice per image, and a generator's context manager costs 1 us more)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)


class NodeMemory:
    """This process's view of its node's budget. Within the process, requests of one kind
    queue first come, first served, and the first of them queues on the node by its ticket:
    a large request is not passed for ever by smaller ones, here or in another process. A
    request larger than its kind may ever hold waits until it can hold all of it."""

    def __init__(self, path: Path, total: int) -> None:
        self.total = total
        self.body_room = total - total // 2
        self._pid = os.getpid()
        self._start = started_at(self._pid) or 0
        self._turns = {kind: asyncio.Lock() for kind in Kind}
        # Requests of each kind waiting here, for their turn or in it. Not the lock's `locked()`:
        # between a turn's end and the next waiter's wake-up it is False while one still waits.
        self._in_line = {kind: 0 for kind in Kind}
        self._freed = asyncio.Event()
        self._reclaimed_at = 0.0
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._flock = Flock(self._fd)
        with self._locked():
            if os.fstat(self._fd).st_size != FILE_BYTES:
                os.ftruncate(self._fd, 0)
                os.ftruncate(self._fd, FILE_BYTES)
            self._map = mmap.mmap(self._fd, FILE_BYTES)
            if self._header()[0] != MAGIC:
                self._map[:] = bytes(FILE_BYTES)
                self._set_header(0, MAGIC)
            self._reclaim()
            self._slot = self._claim()

    @property
    def in_use(self) -> int:
        """Bytes held on the node now, by every holder."""
        with self._locked():
            return self._header()[2]

    @property
    def bodies(self) -> int:
        """Bytes of bodies held on the node now (the rest of `in_use` is decoding)."""
        with self._locked():
            _, _, held, decoding, *_ = self._header()
            return held - decoding

    def close(self) -> None:
        """Give back this holder's entry (and whatever it still holds)."""
        with self._locked():
            self._drop(self._slot)
        self._map.close()
        os.close(self._fd)

    async def take(self, kind: Kind, amount: int) -> int:
        """Hold `amount` bytes of `kind` (at most what the kind may ever hold), waiting for
        them as long as needed; returns the bytes held, to be given back with `give_back`."""
        held = self.try_take(kind, amount)  # none here waits before it
        if held is not None:
            return held
        amount = self._clamp(kind, amount)
        self._in_line[kind] += 1
        try:
            async with self._turns[kind]:
                return await self._take_in_turn(kind, amount)
        finally:
            self._in_line[kind] -= 1

    async def _take_in_turn(self, kind: Kind, amount: int) -> int:
        """`take` for the first in line here: first at once, else queued on the node."""
        if self._take_at_once(kind, amount):
            return amount
        with self._locked():
            self._queue(kind, amount)
        try:
            while True:
                self._freed.clear()
                with self._locked():
                    if self._first_in_line(kind) and self._fits(kind, amount):
                        self._unqueue(kind)
                        self._add(kind, amount)
                        return amount
                    if time.monotonic() - self._reclaimed_at > RECLAIM_SECONDS:
                        self._reclaim()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_SECONDS):
                        await self._freed.wait()
        except BaseException:
            with self._locked():
                self._unqueue(kind)
            raise

    def try_take(self, kind: Kind, amount: int) -> int | None:
        """`take` without the wait: the bytes held, if they are held at once (none waits
        before them, here or in another process, and they fit); else None, nothing held."""
        amount = self._clamp(kind, amount)
        if self._in_line[kind] == 0 and self._take_at_once(kind, amount):
            return amount
        return None

    def _clamp(self, kind: Kind, amount: int) -> int:
        room = self.body_room if kind is Kind.BODY else self.total
        return max(0, min(amount, room))

    def _take_at_once(self, kind: Kind, amount: int) -> bool:
        """Hold `amount` if it fits and no other process waits for its kind."""
        with self._locked():
            if self._header()[4 + kind] == 0 and self._fits(kind, amount):
                self._add(kind, amount)
                return True
        return False

    def give_back(self, kind: Kind, amount: int) -> None:
        if kind is Kind.BODY:
            self.give_back_both(body=amount)
        else:
            self.give_back_both(decode=amount)

    def give_back_both(self, body: int = 0, decode: int = 0) -> None:
        """Give back bytes of both kinds under one lock of the file: an image gives back its
        decode and its body together (each lock is two system calls, ~4 us here)."""
        if body <= 0 and decode <= 0:
            return
        with self._locked():
            if body > 0:
                self._add(Kind.BODY, -body)
            if decode > 0:
                self._add(Kind.DECODE, -decode)
        self._freed.set()

    # ---- the file, always under the lock ------------------------------------------------------

    def _locked(self) -> Flock:
        return self._flock

    def _header(self) -> tuple[int, ...]:
        return HEADER.unpack_from(self._map, 0)

    def _set_header(self, field: int, value: int) -> None:
        struct.pack_into("<q", self._map, field * 8, value)

    def _entry(self, slot: int) -> tuple[int, ...]:
        return ENTRY.unpack_from(self._map, HEADER.size + slot * ENTRY.size)

    def _set_entry(self, slot: int, field: int, value: int) -> None:
        struct.pack_into("<q", self._map, HEADER.size + slot * ENTRY.size + field * 8, value)

    def _fits(self, kind: Kind, amount: int) -> bool:
        _, _, held, decoding, *_ = self._header()
        if kind is Kind.BODY:
            return held + amount <= self.body_room
        # A decode larger than the room that bodies leave runs once no other decode does.
        return held + amount <= self.total or decoding == 0

    def _add(self, kind: Kind, amount: int) -> None:
        decoding = amount if kind is Kind.DECODE else 0
        for offset in (16, HEADER.size + self._slot * ENTRY.size + 16):  # the totals, the entry's
            held, of_them = TWO.unpack_from(self._map, offset)
            TWO.pack_into(self._map, offset, held + amount, of_them + decoding)

    def _queue(self, kind: Kind, amount: int) -> None:
        header = self._header()
        self._set_header(1, header[1] + 1)
        self._set_header(4 + kind, header[4 + kind] + 1)
        self._set_entry(self._slot, 4 + 2 * kind, header[1] + 1)
        self._set_entry(self._slot, 5 + 2 * kind, amount)

    def _unqueue(self, kind: Kind) -> None:
        if self._entry(self._slot)[4 + 2 * kind]:
            self._set_header(4 + kind, self._header()[4 + kind] - 1)
            self._set_entry(self._slot, 4 + 2 * kind, 0)
            self._set_entry(self._slot, 5 + 2 * kind, 0)

    def _entries(self) -> Iterator[tuple[int, ...]]:
        """Every entry ever claimed (the slots below the header's count), free ones too."""
        used = self._header()[6]
        return ENTRY.iter_unpack(self._map[HEADER.size : HEADER.size + used * ENTRY.size])

    def _first_in_line(self, kind: Kind) -> bool:
        mine = self._entry(self._slot)[4 + 2 * kind]
        return all(not 0 < entry[4 + 2 * kind] < mine for entry in self._entries())

    def _claim(self) -> int:
        used = self._header()[6]
        free = (slot for slot, entry in enumerate(self._entries()) if entry[0] == 0)
        slot = next(free, used)
        if slot == ENTRIES:
            raise RuntimeError(f"more than {ENTRIES} holders of one node's memory budget")
        self._set_header(6, max(used, slot + 1))
        self._set_entry(slot, 0, self._pid)
        self._set_entry(slot, 1, self._start)
        return slot

    def _reclaim(self) -> None:
        """Take back the bytes and the places in line of the holders that died (a pid whose
        start time differs is another process's now)."""
        self._reclaimed_at = time.monotonic()
        dead = [
            slot
            for slot, (pid, start, *_) in enumerate(self._entries())
            if pid and started_at(pid) != start
        ]
        for slot in dead:
            self._drop(slot)

    def _drop(self, slot: int) -> None:
        """Free the slot, and count the totals again from the entries: a holder killed between
        its change of the totals and of its entry (each a few stores) leaves them apart."""
        for field in range(ENTRY.size // 8):
            self._set_entry(slot, field, 0)
        entries = list(self._entries())
        self._set_header(2, sum(entry[2] for entry in entries))
        self._set_header(3, sum(entry[3] for entry in entries))
        self._set_header(4, sum(1 for entry in entries if entry[4]))
        self._set_header(5, sum(1 for entry in entries if entry[6]))


class ImageMemory:
    """What one image holds of its node's budget: its body's bytes from the moment they are
    read until the image is measured, and its decode's bytes while it decodes. `NodeMemory.
    image` gives back whatever is still held when the image is done, however it ends."""

    def __init__(self, node: NodeMemory) -> None:
        self._node = node
        self._body = 0

    @property
    def body(self) -> int:
        return self._body

    async def hold_body(self, amount: int) -> None:
        """Hold `amount` bytes for a body about to be read (one body at a time)."""
        self.drop_body()
        self._body = await self._node.take(Kind.BODY, amount)

    def try_hold_body(self, amount: int) -> bool:
        """`hold_body` if the bytes can be held at once; else hold nothing and say so."""
        self.drop_body()
        held = self._node.try_take(Kind.BODY, amount)
        if held is None:
            return False
        self._body = held
        return True

    def keep_body(self, size: int) -> None:
        """The body turned out `size` bytes: give back what was held beyond them."""
        excess = self._body - min(size, self._body)
        self._node.give_back(Kind.BODY, excess)
        self._body -= excess

    def drop_body(self) -> None:
        self._node.give_back(Kind.BODY, self._body)
        self._body = 0

    @contextlib.asynccontextmanager
    async def decoding(self, amount: int) -> AsyncIterator[None]:
        """Hold `amount` bytes while the image decodes; at the end, give them back with the
        body's, which the image no longer needs once decoded."""
        held = await self._node.take(Kind.DECODE, amount)
        try:
            yield
        finally:
            body, self._body = self._body, 0
            self._node.give_back_both(body=body, decode=held)


@contextlib.asynccontextmanager
async def image_memory(node: NodeMemory | None) -> AsyncIterator[ImageMemory | None]:
    """One image's holds on `node` (None: nothing bounds it), all given back at the end."""
    if node is None:
        yield None
        return
    image = ImageMemory(node)
    try:
        yield image
    finally:
        image.drop_body()
