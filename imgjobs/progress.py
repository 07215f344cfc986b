"""The progress line of `imgjobs submit --wait`: images settled of total, rate, ETA, failures.
Pure: fed (time, counts) samples, it renders text."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

BAR_WIDTH = 24
RATE_WINDOW_SECONDS = 10.0


@dataclass
class ProgressMeter:
    total: int
    _samples: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, now: float, settled: int) -> None:
        self._samples.append((now, settled))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_SECONDS:
            self._samples.popleft()

    def rate(self) -> float | None:
        """Images settled per second over the last few seconds; None until it can be told."""
        if len(self._samples) < 2:
            return None
        (start, first), (end, last) = self._samples[0], self._samples[-1]
        return (last - first) / (end - start) if end > start else None

    def eta_seconds(self) -> float | None:
        rate = self.rate()
        if not self._samples or not rate:
            return None
        return (self.total - self._samples[-1][1]) / rate

    def line(self, state: str, settled: int, failed: int) -> str:
        share = settled / self.total if self.total else 1.0
        filled = round(share * BAR_WIDTH)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        rate, eta = self.rate(), self.eta_seconds()
        rate_text = f"{rate:.1f} img/s" if rate is not None else "- img/s"
        eta_text = format_duration(eta) if eta is not None else "-"
        return (
            f"[{bar}] {settled}/{self.total} {share:4.0%}  {rate_text}  ETA {eta_text}"
            f"  failed {failed}  {state}"
        )


def format_duration(seconds: float) -> str:
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
