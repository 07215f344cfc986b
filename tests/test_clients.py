from __future__ import annotations

import pytest

from core.clients import ApiKeys, RateLimiter, client_id_for_key
from core.settings import Settings


def test_bearer_key_names_its_client() -> None:
    keys = ApiKeys(("alpha-key", "beta-key"))
    assert keys.client_for("Bearer beta-key") == client_id_for_key("beta-key")
    assert keys.client_for("bearer alpha-key") == client_id_for_key("alpha-key")
    assert client_id_for_key("alpha-key") != client_id_for_key("beta-key")


def test_invalid_or_missing_keys_are_refused() -> None:
    keys = ApiKeys(("alpha-key",))
    for header in (None, "", "Bearer", "Bearer ", "Basic alpha-key", "Bearer alpha", "alpha-key"):
        assert keys.client_for(header) is None


def test_client_id_does_not_contain_the_key() -> None:
    assert "secret" not in client_id_for_key("secret")


def test_rate_limiter_allows_a_burst_then_paces() -> None:
    limiter = RateLimiter(rate=2, burst=3)
    assert [limiter.retry_after("a", 0.0) for _ in range(3)] == [None, None, None]
    assert limiter.retry_after("a", 0.0) == 1
    assert limiter.retry_after("b", 0.0) is None  # clients have their own buckets
    assert limiter.retry_after("a", 0.5) is None  # half a second buys one token at 2/s
    assert limiter.retry_after("a", 0.5) == 1


def test_rate_limiter_forgets_buckets_that_have_refilled() -> None:
    # Without this, one bucket per caller address would be kept for ever.
    limiter = RateLimiter(rate=10, burst=50)  # a bucket refills in 5 s
    for caller in range(10_000):
        assert limiter.retry_after(f"10.0.{caller // 256}.{caller % 256}", caller / 1000) is None
    assert len(limiter) <= 5_001  # only the callers of the last 5 s
    assert limiter.retry_after("late", 100.0) is None
    assert len(limiter) == 1


def test_rate_limiter_refuses_a_rate_of_zero() -> None:
    # 1e-320: 1 / rate is infinite, and the wait for the next token cannot be an integer.
    for rate, burst in ((0, 5), (-1, 5), (float("nan"), 5), (1e-320, 5), (1, 0)):
        with pytest.raises(ValueError, match="rate > 0"):
            RateLimiter(rate=rate, burst=burst)


def test_the_slowest_rate_allowed_answers_a_finite_retry_after() -> None:
    settings = Settings.from_env(
        {"IMAGE_SERVICE_SUBMIT_RATE": "0.001", "IMAGE_SERVICE_SUBMIT_BURST": "1"}
    )
    limiter = RateLimiter(settings.submit_rate, settings.submit_burst)
    assert limiter.retry_after("a", 0.0) is None
    assert limiter.retry_after("a", 0.0) == 1000  # a token every 1,000 s
    assert limiter.retry_after("a", 999.5) == 1
    assert limiter.retry_after("a", 1000.0) is None
