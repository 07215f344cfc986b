"""Who is calling: API-key authentication and per-client submission rate limits."""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import OrderedDict
from dataclasses import dataclass


def client_id_for_key(key: str) -> str:
    """A stable, non-secret name for a key's holder; the key itself is never stored or logged."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ApiKeys:
    keys: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        return bool(self.keys)

    def client_for(self, authorization: str | None) -> str | None:
        """The client id for an `Authorization: Bearer <key>` header, or None if it holds no
        valid key. Every key is compared, in constant time, whatever matches."""
        if authorization is None:
            return None
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return None
        presented_bytes = presented.strip().encode()
        found: str | None = None
        for key in self.keys:
            if hmac.compare_digest(presented_bytes, key.encode()):
                found = key
        return client_id_for_key(found) if found is not None else None


class RateLimiter:
    """A token bucket per client: `rate` submissions per second, bursts of up to `burst`.

    Memory is bounded by the clients seen within the last `burst / rate` seconds: a bucket
    idle that long has refilled, which is the same as having none, so it is forgotten."""

    def __init__(self, rate: float, burst: int) -> None:
        # A rate so small that 1 / rate is infinite (1e-320) has no wait in whole seconds.
        if not (rate > 0 and math.isfinite(1 / rate)) or burst < 1:
            raise ValueError(
                f"a rate limit needs rate > 0 (1 / rate finite) and burst >= 1, got {rate}, {burst}"
            )
        self.rate = rate
        self.burst = burst
        # Least recently used first: (tokens, when they were counted).
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def retry_after(self, client: str, now: float) -> int | None:
        """Take one token; None if granted, else the whole seconds to wait for the next one."""
        self._forget_refilled(now)
        tokens, last = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[client] = (tokens - 1, now)
            return None
        self._buckets[client] = (tokens, now)
        return max(1, math.ceil((1 - tokens) / self.rate))

    def _forget_refilled(self, now: float) -> None:
        refill_seconds = self.burst / self.rate
        while self._buckets:
            client, (_tokens, last) = next(iter(self._buckets.items()))
            if now - last < refill_seconds:
                return
            del self._buckets[client]
