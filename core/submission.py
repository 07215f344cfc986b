"""Validation of a `POST /api/submit/` body into a `JobSubmission`, with messages for the client."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from urllib.parse import urlsplit

from core.errors import InvalidSubmission, SubmissionTooLarge
from core.models import JobSubmission, Visit
from core.settings import Settings
from core.text import is_utf8_text

MAX_PORT = 65535


@dataclass(frozen=True)
class SubmissionLimits:
    max_images: int
    max_url_length: int
    max_store_id_length: int
    max_visit_time_length: int

    @classmethod
    def from_settings(cls, settings: Settings) -> SubmissionLimits:
        return cls(
            max_images=settings.max_images_per_job,
            max_url_length=settings.max_url_length,
            max_store_id_length=settings.max_store_id_length,
            max_visit_time_length=settings.max_visit_time_length,
        )


def parse_submission(body: bytes, limits: SubmissionLimits) -> JobSubmission:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InvalidSubmission("body must be a JSON object") from None
    except ValueError:
        # Python refuses to read integers of more than 4,300 digits.
        raise InvalidSubmission("body holds a number with too many digits") from None
    return validate_submission(payload, limits)


def validate_submission(payload: Any, limits: SubmissionLimits) -> JobSubmission:
    if not isinstance(payload, dict):
        raise InvalidSubmission("body must be a JSON object")
    for key in ("count", "visits"):
        if key not in payload:
            raise InvalidSubmission(f"missing field: {key}")
    callback_url = payload.get("callback_url")
    if callback_url is not None:
        _validate_url(callback_url, "callback_url", limits)
    count = payload["count"]
    if not _is_int(count) or count < 0:
        raise InvalidSubmission("count must be a non-negative integer")
    if count > limits.max_images:
        # Every visit has an image, so no larger count can match; nor is it worth quoting.
        raise InvalidSubmission(f"count must be at most {limits.max_images}")
    raw_visits = payload["visits"]
    if not isinstance(raw_visits, list):
        raise InvalidSubmission("visits must be a list")
    if not raw_visits:
        raise InvalidSubmission("visits must not be empty")
    if count != len(raw_visits):
        raise InvalidSubmission(
            f"count ({count}) does not match the number of visits ({len(raw_visits)})"
        )
    visits: list[Visit] = []
    image_count = 0
    for position, raw_visit in enumerate(raw_visits):
        visit = _validate_visit(raw_visit, f"visits[{position}]", limits)
        image_count += len(visit.image_urls)
        if image_count > limits.max_images:
            raise SubmissionTooLarge(f"a job may hold at most {limits.max_images} images")
        visits.append(visit)
    return JobSubmission(visits=tuple(visits), callback_url=callback_url)


def submission_fingerprint(submission: JobSubmission) -> str:
    """A digest of what the submission asks for, blind to JSON spacing and key order: an
    Idempotency-Key retry matches it exactly, a different body does not."""
    canonical = json.dumps(
        [
            submission.callback_url,
            [[v.store_id, v.visit_time, list(v.image_urls)] for v in submission.visits],
        ],
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _validate_visit(raw: Any, where: str, limits: SubmissionLimits) -> Visit:
    if not isinstance(raw, dict):
        raise InvalidSubmission(f"{where} must be an object")
    for key in ("store_id", "image_url", "visit_time"):
        if key not in raw:
            raise InvalidSubmission(f"{where}.{key} is missing")
    store_id = raw["store_id"]
    if not isinstance(store_id, str) or not store_id.strip():
        raise InvalidSubmission(f"{where}.store_id must be a non-empty string")
    if len(store_id) > limits.max_store_id_length:
        raise InvalidSubmission(
            f"{where}.store_id is longer than {limits.max_store_id_length} characters"
        )
    if not is_printable_text(store_id):
        raise InvalidSubmission(
            f"{where}.store_id must be printable text (no control characters or lone surrogates)"
        )
    urls = raw["image_url"]
    if not isinstance(urls, list) or not urls:
        raise InvalidSubmission(f"{where}.image_url must be a non-empty list of URLs")
    for position, url in enumerate(urls):
        _validate_url(url, f"{where}.image_url[{position}]", limits)
    visit_time = raw["visit_time"]
    if isinstance(visit_time, str) and len(visit_time) > limits.max_visit_time_length:
        raise InvalidSubmission(
            f"{where}.visit_time is longer than {limits.max_visit_time_length} characters"
        )
    if not isinstance(visit_time, str) or not is_iso8601(visit_time):
        raise InvalidSubmission(f"{where}.visit_time must be an ISO 8601 date or date-time")
    return Visit(store_id=store_id, visit_time=visit_time, image_urls=tuple(urls))


def _validate_url(url: Any, where: str, limits: SubmissionLimits) -> None:
    if not isinstance(url, str):
        raise InvalidSubmission(f"{where} must be a string")
    if len(url) > limits.max_url_length:
        raise InvalidSubmission(f"{where} is longer than {limits.max_url_length} characters")
    if not is_http_url(url):
        raise InvalidSubmission(f"{where} must be an absolute http(s) URL")


def is_printable_text(text: str) -> bool:
    """No C0 or C1 control character, DEL or lone surrogate: text fit to store and to show."""
    return is_utf8_text(text) and not any(
        ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F for char in text
    )


# The URLs clients send nearly always: a lowercase scheme, a plain host (no user info, no IPv6
# literal), an optional port, then visible ASCII. Such a URL is one `is_http_url` takes when
# its port is in range; it is answered without `urlsplit`, which cost most of a 10k-image
# submission's validation. Anything else takes the full check.
_PLAIN_HTTP_URL = re.compile(r"https?://[A-Za-z0-9._~-]+(?::([0-9]{1,5}))?(?:[/?#][!-~]*)?")


def is_http_url(url: str) -> bool:
    plain = _PLAIN_HTTP_URL.fullmatch(url)
    if plain is not None:
        port = plain.group(1)
        return port is None or int(port) <= MAX_PORT
    if not is_utf8_text(url) or any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url):
        return False
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port out of range or not a number
    except ValueError:
        return False
    del port
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def is_iso8601(text: str) -> bool:
    if not text or not text.isascii() or text != text.strip():
        return False
    for parse in (date.fromisoformat, datetime.fromisoformat):
        try:
            parse(text)
        except ValueError:
            continue
        return True
    return False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
