"""Who is calling: API-key authentication and per-client submission rate limits."""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass, field


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


@dataclass
class RateLimiter:
    """A token bucket per client: `rate` submissions per second, bursts of up to `burst`."""

    rate: float
    burst: int
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # tokens, when

    def retry_after(self, client: str, now: float) -> int | None:
        """Take one token; None if granted, else the whole seconds to wait for the next one."""
        tokens, last = self._buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[client] = (tokens - 1, now)
            return None
        self._buckets[client] = (tokens, now)
        return max(1, math.ceil((1 - tokens) / self.rate))


class TooManyOpenJobs(RuntimeError):
    """The client already has as many unfinished jobs as it may."""
