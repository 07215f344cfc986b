"""The progress line of `imgjobs submit --wait` and `imgjobs wait`: images processed of total,
rate, ETA, failures. Pure: fed (time, counts) samples, it renders text."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

BAR_WIDTH = 24
RATE_WINDOW_SECONDS = 10.0
# A job in these states has been cancelled: nothing more leaves its queue for a worker.
CANCELLED_STATES = frozenset({"cancelling", "cancelled"})


@dataclass
class ProcessedCount:
    """Images processed so far: done, or failed other than by a cancel. The job's detail counts
    the images a cancel dropped among its failed ones; this tells them apart from poll to poll.

    A cancel empties the queue at once and nothing is dispatched after it, so the images that
    left the queue between the last poll before the cancel and the first after it are taken as
    dropped (the few dispatched in that interval before the cancel are counted dropped too: an
    error of at most one poll interval's dispatches). A job first seen already cancelled cannot
    be told apart: its failures up to then are all taken as dropped."""

    dropped: int = 0
    _queued: int | None = None  # at the last poll

    def update(self, job: Mapping[str, Any]) -> int:
        """Feed one poll's detail; returns the images processed."""
        if job["status"] in CANCELLED_STATES:
            if self._queued is None:
                self.dropped = job["failed"]
            else:
                self.dropped += max(0, self._queued - job["queued"])
            self.dropped = min(self.dropped, job["failed"])  # a dropped image is a failed one
        self._queued = job["queued"]
        return int(job["done"]) + int(job["failed"]) - self.dropped


@dataclass
class ProgressMeter:
    total: int
    _samples: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, now: float, processed: int) -> None:
        self._samples.append((now, processed))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_SECONDS:
            self._samples.popleft()

    def rate(self) -> float | None:
        """Images processed per second over the last few seconds; None until it can be told."""
        if len(self._samples) < 2:
            return None
        (start, first), (end, last) = self._samples[0], self._samples[-1]
        return (last - first) / (end - start) if end > start else None

    def eta_seconds(self, dropped: int = 0) -> float | None:
        """Seconds until the images neither processed nor dropped are, at the current rate."""
        rate = self.rate()
        if not self._samples or not rate:
            return None
        return max(0, self.total - dropped - self._samples[-1][1]) / rate

    def line(self, state: str, processed: int, failed: int, dropped: int = 0) -> str:
        share = processed / self.total if self.total else 1.0
        filled = round(share * BAR_WIDTH)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        rate, eta = self.rate(), self.eta_seconds(dropped)
        rate_text = f"{rate:.1f} img/s" if rate is not None else "- img/s"
        eta_text = format_duration(eta) if eta is not None else "-"
        return (
            f"[{bar}] {processed}/{self.total} {share:4.0%}  {rate_text}  ETA {eta_text}"
            f"  failed {failed}  {state}"
        )


def format_duration(seconds: float) -> str:
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
