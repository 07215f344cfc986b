"""The dispatch lease as one tracker sees it: whether it holds it, and until when it may
dispatch. A plain state machine: the store's calls and the clock are passed in, so it is tested
without Ray, a database or real time.

One tracker at a time holds the lease, in the job store (`JobStore.hold_lease`), and renews it
every third of a lease. Dispatching stops a third of a lease before the lease could expire
unrenewed, counted from when the renewal was asked (the store's answer and the clocks get that
third), so a tracker that cannot reach the store has stopped before another may take over.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable

from core.errors import StorageError

log = logging.getLogger(__name__)


class LeaseChange(enum.Enum):
    """What one renewal found."""

    TAKEN = "taken"  # held now, and another holder may have had it since we last knew: reload
    KEPT = "kept"  # held now, and held without a gap
    LOST = "lost"  # another holder has it now
    STANDING_BY = "standing by"  # another holder has it, as before
    UNANSWERED = "unanswered"  # the store did not answer: nothing known, dispatch runs out


class DispatchLease:
    def __init__(
        self,
        holder: str,
        seconds: float,
        hold: Callable[[str, float], Awaitable[bool]],
        release: Callable[[str], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.holder = holder
        self.seconds = seconds
        self._hold = hold
        self._release = release
        self._clock = clock
        self.held = False
        self._stopped = False
        self._unanswered = False
        # When the last renewal that succeeded was asked: the lease in the store runs at least
        # `seconds` from then, so no other holder can have had it before then + `seconds`.
        self._renewed_at: float | None = None

    @property
    def renewal_interval(self) -> float:
        """Until the next renewal: a third of a lease after one that was answered; an
        eighteenth after one that was not, so that a renewal cut off at its deadline (a
        sixth) still leaves the next time to land before dispatching must stop."""
        return self.seconds / (18 if self._unanswered else 3)

    @property
    def dispatch_until(self) -> float:
        """The clock time at which dispatching stops unless the lease is renewed before."""
        if self._renewed_at is None or not self.held or self._stopped:
            return float("-inf")
        return self._renewed_at + self.seconds * 2 / 3

    @property
    def dispatching(self) -> bool:
        return self._clock() < self.dispatch_until

    async def renew(self) -> LeaseChange:
        """Take the lease, or extend it; say what changed. A store error is logged and
        answered `UNANSWERED`: the lease stays as it was, and dispatching runs out on time."""
        if self._stopped:
            return LeaseChange.UNANSWERED
        asked = self._clock()
        try:
            held = await self._hold(self.holder, self.seconds)
        except StorageError as exc:
            log.warning("renewing the dispatch lease failed: %s", exc)
            self._unanswered = True
            return LeaseChange.UNANSWERED
        self._unanswered = False
        answered = self._clock()
        was_held, renewed_at = self.held, self._renewed_at
        self.held = held and not self._stopped
        if not self.held:
            return LeaseChange.LOST if was_held else LeaseChange.STANDING_BY
        self._renewed_at = asked
        # The store may have renewed it after it expired, when another holder could have taken
        # it and let it go meanwhile: what this tracker holds in memory may be stale then.
        gapless = was_held and renewed_at is not None and answered < renewed_at + self.seconds
        return LeaseChange.KEPT if gapless else LeaseChange.TAKEN

    async def release(self) -> None:
        """Stop for good, and give the lease up at once if held: another cluster sharing the
        store may take over now, not when the lease would expire."""
        self._stopped = True
        if self.held:
            self.held = False
            await self._release(self.holder)
