"""The dispatch lease's state machine (core/lease.py), on a clock the tests move and a store
the tests script. The exact edges matter: dispatching must stop a third of a lease before the
lease can expire unrenewed, and not a moment later."""

from __future__ import annotations

import asyncio

import pytest

from core.errors import StorageError
from core.lease import DispatchLease, LeaseChange

LEASE = 15.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Store:
    """The lease row as the store keeps it, answering after `delay` seconds of the clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.holder: str | None = None
        self.failing = False
        self.delay = 0.0
        self.released: list[str] = []

    async def hold(self, holder: str, _seconds: float) -> bool:
        self.clock.now += self.delay
        if self.failing:
            raise StorageError("could not hold the dispatch lease: the job database did not answer")
        if self.holder in (None, holder):
            self.holder = holder
        return self.holder == holder

    async def release(self, holder: str) -> None:
        self.released.append(holder)
        if self.holder == holder:
            self.holder = None


def lease_on(clock: Clock, store: Store, holder: str = "A") -> DispatchLease:
    return DispatchLease(holder, LEASE, store.hold, store.release, clock)


def renew(lease: DispatchLease) -> LeaseChange:
    return asyncio.run(lease.renew())


def test_a_new_lease_dispatches_for_two_thirds_of_a_lease_from_when_it_was_asked() -> None:
    clock = Clock()
    store = Store(clock)
    store.delay = 1.0  # the answer takes a second: the window counts from the asking
    lease = lease_on(clock, store)
    assert not lease.dispatching
    asked = clock.now
    assert renew(lease) is LeaseChange.TAKEN
    assert lease.dispatching  # a lease that never dispatches fails here
    clock.now = asked + LEASE * 2 / 3 - 0.001
    assert lease.dispatching
    clock.now = asked + LEASE * 2 / 3
    assert not lease.dispatching  # one that dispatches a moment longer fails here


def test_renewals_every_third_keep_it_dispatching_without_a_gap() -> None:
    clock = Clock()
    store = Store(clock)
    lease = lease_on(clock, store)
    assert renew(lease) is LeaseChange.TAKEN
    for _ in range(5):
        clock.now += lease.renewal_interval
        assert lease.dispatching
        assert renew(lease) is LeaseChange.KEPT
        assert lease.dispatching


def test_a_renewal_that_fails_is_unanswered_and_dispatching_runs_out_on_time() -> None:
    clock = Clock()
    store = Store(clock)
    lease = lease_on(clock, store)
    renewed = clock.now
    assert renew(lease) is LeaseChange.TAKEN
    store.failing = True
    clock.now += LEASE / 3
    assert renew(lease) is LeaseChange.UNANSWERED
    assert lease.held  # nothing is known: still its holder as far as it can tell
    clock.now = renewed + LEASE * 2 / 3
    assert not lease.dispatching
    # Answered again before another could take it over: kept, and dispatching resumes.
    store.failing = False
    clock.now = renewed + LEASE * 5 / 6
    assert renew(lease) is LeaseChange.KEPT
    assert lease.dispatching


def test_held_again_after_a_gap_where_another_could_have_had_it_is_a_fresh_take() -> None:
    """Past a whole lease since the last renewal another holder may have taken the lease and
    let it go: the jobs this tracker held in memory may be stale, so it says TAKEN."""
    clock = Clock()
    store = Store(clock)
    lease = lease_on(clock, store)
    renewed = clock.now
    assert renew(lease) is LeaseChange.TAKEN
    clock.now = renewed + LEASE
    assert renew(lease) is LeaseChange.TAKEN


def test_another_holder_ends_it_and_standing_by_is_no_change() -> None:
    clock = Clock()
    store = Store(clock)
    lease = lease_on(clock, store)
    assert renew(lease) is LeaseChange.TAKEN
    store.holder = "B"
    assert renew(lease) is LeaseChange.LOST
    assert not lease.held and not lease.dispatching
    assert renew(lease) is LeaseChange.STANDING_BY


def test_release_gives_it_up_at_once_and_for_good() -> None:
    clock = Clock()
    store = Store(clock)
    lease = lease_on(clock, store)
    assert renew(lease) is LeaseChange.TAKEN
    asyncio.run(lease.release())
    assert store.released == ["A"] and store.holder is None
    assert not lease.dispatching
    assert renew(lease) is LeaseChange.UNANSWERED  # a stopped tracker never takes it again
    assert store.holder is None


@pytest.mark.parametrize("delay", [0.0, LEASE / 6])
def test_a_renewal_within_its_deadline_never_leaves_a_dispatch_gap(delay: float) -> None:
    """Renewals every third, each answered within the lease lane's deadline (a sixth): the
    window never closes between them."""
    clock = Clock()
    store = Store(clock)
    store.delay = delay
    lease = lease_on(clock, store)
    renew(lease)
    for _ in range(10):
        clock.now += lease.renewal_interval
        assert lease.dispatching
        renew(lease)
