"""Query and path parameters as the API reads them."""

from __future__ import annotations

import re

JOB_ID_PATTERN = re.compile(r"[0-9]{1,18}")


def parse_job_id(raw: str | None) -> int | None:
    """The job id a parameter names, or None when it names none (the API's `400 {}`)."""
    if raw is None or not JOB_ID_PATTERN.fullmatch(raw):
        return None
    return int(raw)
