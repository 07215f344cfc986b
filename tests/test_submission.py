from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from core.errors import InvalidSubmission, SubmissionTooLarge
from core.settings import Settings
from core.submission import (
    SubmissionLimits,
    is_http_url,
    is_iso8601,
    parse_submission,
    submission_fingerprint,
)
from core.text import is_utf8_text

LIMITS = SubmissionLimits.from_settings(Settings(max_images_per_job=5, max_url_length=64))


def visit(store: str, urls: list[str], when: str = "2025-03-11") -> dict[str, Any]:
    return {"store_id": store, "image_url": urls, "visit_time": when}


def encode(*visits: dict[str, Any]) -> bytes:
    return json.dumps({"count": len(visits), "visits": list(visits)}).encode()


def test_valid_body_becomes_a_submission() -> None:
    body = encode(
        visit("S1", ["http://a.test/1.jpg", "https://a.test/2.jpg"]),
        visit("S2", ["http://a.test/3.jpg"], "2025-03-11T09:30:00+05:30"),
    )
    submission = parse_submission(body, LIMITS)
    assert submission.image_count == 3
    assert [v.store_id for v in submission.visits] == ["S1", "S2"]
    assert submission.visits[0].image_urls == ("http://a.test/1.jpg", "https://a.test/2.jpg")


def test_image_limit_counts_across_visits() -> None:
    three = visit("S", ["http://a.test/1", "http://a.test/2", "http://a.test/3"])
    with pytest.raises(SubmissionTooLarge, match="at most 5 images"):
        parse_submission(encode(three, three), LIMITS)


def test_long_url_is_refused_by_length() -> None:
    url = "http://a.test/" + "x" * 60
    with pytest.raises(InvalidSubmission, match=r"image_url\[0\] is longer than 64"):
        parse_submission(encode(visit("S", [url])), LIMITS)


def test_deeply_nested_json_is_a_clean_error() -> None:
    with pytest.raises(InvalidSubmission):
        parse_submission(b"[" * 100_000 + b"]" * 100_000, LIMITS)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://a.test/x.jpg", True),
        ("https://a.test:8443/x.jpg?sig=1", True),
        ("http://[::1]:80/x", True),
        ("HTTP://A.TEST/x", True),
        ("ftp://a.test/x", False),
        ("http:///x", False),
        ("//a.test/x", False),
        ("http://a.test:99999/x", False),
        ("http://a.test/x y", False),
        ("http://a.test/\nx", False),
        ("javascript:alert(1)", False),
    ],
)
def test_http_url_judgement(url: str, ok: bool) -> None:
    assert is_http_url(url) is ok
    assert full_http_url_check(url) is ok


def full_http_url_check(url: str) -> bool:
    """`is_http_url` without its fast path for plain URLs: what it must agree with."""
    if not is_utf8_text(url) or any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url):
        return False
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


URL_PIECES = st.text(alphabet="aZ09.-_~[]:@/?#%! \x7f\x00é\ud800", max_size=12)


@settings(max_examples=1000, deadline=None)
@example(scheme="http://", host="@", port=None, tail="")
@example(scheme="http://", host="u@h", port="80", tail="/x")
@example(scheme="http://", host="[::1]", port=None, tail="/")
@example(scheme="http://", host="h", port="", tail="/")
@example(scheme="http://", host="h", port="65536", tail="")
@example(scheme="http://", host="h", port="0", tail="")
@example(scheme="http://", host="h", port="00080", tail="")
@example(scheme="https://", host="h", port=None, tail="/\x7f")
@example(scheme="https://", host="h", port=None, tail="/é")
@example(scheme="http://", host="", port="80", tail="/x")
@given(
    scheme=st.sampled_from(["http://", "https://", "HTTP://", "ftp://", "http:/", "http:", ""]),
    host=URL_PIECES,
    port=st.one_of(st.none(), st.integers(0, 999_999).map(str), st.just(""), URL_PIECES),
    tail=st.one_of(st.just(""), URL_PIECES.map(lambda piece: "/" + piece), URL_PIECES),
)
def test_the_fast_path_judges_every_url_as_the_full_check(
    scheme: str, host: str, port: str | None, tail: str
) -> None:
    url = scheme + host + ("" if port is None else ":" + port) + tail
    assert is_http_url(url) is full_http_url_check(url), url


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("2025-03-11", True),
        ("2025-03-11T10:00:00", True),
        ("2025-03-11T10:00:00Z", True),
        ("2025-03-11 10:00:00.123+02:00", True),
        ("2025-02-30", False),
        ("11/03/2025", False),
        ("", False),
        (" 2025-03-11", False),
        ("\uff12\uff10\uff12\uff15-03-11", False),  # full-width digits
    ],
)
def test_iso8601_judgement(text: str, ok: bool) -> None:
    assert is_iso8601(text) is ok


def test_callback_url_is_optional_and_checked() -> None:
    plain = parse_submission(encode(visit("S1", ["http://a.test/1.jpg"])), LIMITS)
    assert plain.callback_url is None
    body = json.loads(encode(visit("S1", ["http://a.test/1.jpg"])))
    with_callback = parse_submission(
        json.dumps({**body, "callback_url": "https://hooks.test/done"}).encode(), LIMITS
    )
    assert with_callback.callback_url == "https://hooks.test/done"
    for bad in ("ftp://hooks.test/x", 5, "https://hooks.test/" + "x" * 64):
        with pytest.raises(InvalidSubmission, match=r"^callback_url "):
            parse_submission(json.dumps({**body, "callback_url": bad}).encode(), LIMITS)


def test_fingerprint_ignores_json_layout_but_not_content() -> None:
    first = parse_submission(encode(visit("S1", ["http://a.test/1.jpg"])), LIMITS)
    reordered = parse_submission(
        b'{"visits": [{"visit_time": "2025-03-11", "image_url": ["http://a.test/1.jpg"],'
        b' "store_id": "S1"}], "count": 1}',
        LIMITS,
    )
    other = parse_submission(encode(visit("S2", ["http://a.test/1.jpg"])), LIMITS)
    assert submission_fingerprint(first) == submission_fingerprint(reordered)
    assert submission_fingerprint(first) != submission_fingerprint(other)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (encode(visit("\ud800", ["http://a.test/1"])), r"visits\[0\]\.store_id must be printable"),
        (encode(visit("S\x00", ["http://a.test/1"])), r"visits\[0\]\.store_id must be printable"),
        (encode(visit("S", ["http://a.test/\udcff"])), r"image_url\[0\] must be an absolute"),
        (encode(visit("S" * 257, ["http://a.test/1"])), r"store_id is longer than 256"),
        (
            encode(visit("S", ["http://a.test/1"], "2025-03-11T10:00:00." + "1" * 100_000)),
            r"visits\[0\]\.visit_time is longer than 64",
        ),
        (b'{"count": ' + b"9" * 5000 + b', "visits": []}', "number with too many digits"),
        (
            json.dumps({"count": 10**4000, "visits": [visit("S", ["http://a.test/1"])]}).encode(),
            r"^count must be at most 5$",
        ),
        (b'{"count": NaN, "visits": []}', "count must be a non-negative integer"),
        (b'{"count": Infinity, "visits": []}', "count must be a non-negative integer"),
        (
            json.dumps(
                {
                    "count": 1,
                    "callback_url": "http://a/\ud800",
                    "visits": [visit("S", ["http://a"])],
                }
            ).encode(),
            "callback_url must be an absolute",
        ),
    ],
)
def test_hostile_fields_are_400s_naming_the_field(body: bytes, message: str) -> None:
    with pytest.raises(InvalidSubmission, match=message):
        parse_submission(body, SubmissionLimits.from_settings(Settings(max_images_per_job=5)))


def test_a_body_with_the_longest_accepted_fields_passes() -> None:
    body = encode(visit("S" * 256, ["http://a.test/" + "x" * 2000], "2025-03-11T10:00:00.123456"))
    assert (
        parse_submission(body, SubmissionLimits.from_settings(Settings())).visits[0].store_id
        == "S" * 256
    )
