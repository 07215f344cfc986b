"""Query and path parameters as the API reads them."""

from __future__ import annotations

import re

from core.errors import InvalidSubmission

JOB_ID_PATTERN = re.compile(r"[0-9]{1,18}")


def parse_job_id(raw: str | None) -> int | None:
    """The job id a parameter names, or None when it names none (the API's `400 {}`)."""
    if raw is None or not JOB_ID_PATTERN.fullmatch(raw):
        return None
    return int(raw)


def parse_non_negative(raw: str | None, name: str, default: int, maximum: int | None) -> int:
    """An offset or limit: `default` when absent; InvalidSubmission (a 400) when bad."""
    if raw is None:
        return default
    if not JOB_ID_PATTERN.fullmatch(raw):
        raise InvalidSubmission(f"{name} must be a non-negative integer")
    value = int(raw)
    if maximum is not None and not 1 <= value <= maximum:
        raise InvalidSubmission(f"{name} must be between 1 and {maximum}")
    return value
