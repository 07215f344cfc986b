"""Query and path parameters as the API reads them."""

from __future__ import annotations

import re

from core.errors import InvalidQueryParameter

JOB_ID_PATTERN = re.compile(r"[0-9]{1,18}")


def parse_job_id(raw: str | None) -> int | None:
    """The job id a parameter names, or None when it names none (the API's `400 {}`)."""
    if raw is None or not JOB_ID_PATTERN.fullmatch(raw):
        return None
    return int(raw)


def _count(raw: str, name: str) -> int:
    if not JOB_ID_PATTERN.fullmatch(raw):
        raise InvalidQueryParameter(f"{name} must be a non-negative integer")
    return int(raw)


def parse_offset(raw: str | None, maximum: int | None = None) -> int:
    """A page's `offset`: 0 (the first row) when absent; a non-negative integer, at most
    `maximum` when given."""
    value = 0 if raw is None else _count(raw, "offset")
    if maximum is not None and value > maximum:
        raise InvalidQueryParameter(f"offset must be at most {maximum}")
    return value


def parse_limit(raw: str | None, default: int, maximum: int) -> int:
    """A page's `limit`: `default` when absent (never past `maximum`); 1 to `maximum`."""
    if raw is None:
        return min(default, maximum)
    value = _count(raw, "limit")
    if not 1 <= value <= maximum:
        raise InvalidQueryParameter(f"limit must be between 1 and {maximum}")
    return value
