"""Query and path parameters (service/params.py): what each accepts, and that a bad paging
parameter is a query-parameter error, answered 400 naming it, not a submission error."""

from __future__ import annotations

import pytest

from core.errors import DatabaseUnavailable, InvalidQueryParameter, SubmissionOutcomeUnknown
from core.submission import InvalidSubmission
from harness.asgi import answer_to
from service.params import parse_job_id, parse_limit, parse_offset

BAD_NUMBERS = ["", "x", "-1", "+1", " 1", "1 ", "1.5", "1e3", "0x10", "\u0661", "9" * 19]


@pytest.mark.parametrize(("raw", "value"), [(None, 0), ("0", 0), ("00", 0), ("25", 25)])
def test_an_offset_is_any_non_negative_integer_zero_by_default(raw: str | None, value: int) -> None:
    assert parse_offset(raw) == value


def test_an_offset_past_the_end_is_kept_the_page_is_empty() -> None:
    assert parse_offset("9" * 18) == 10**18 - 1


@pytest.mark.parametrize("raw", BAD_NUMBERS)
def test_a_bad_offset_is_a_query_parameter_error(raw: str) -> None:
    with pytest.raises(InvalidQueryParameter) as raised:
        parse_offset(raw)
    assert str(raised.value) == "offset must be a non-negative integer"
    assert not isinstance(raised.value, InvalidSubmission)


@pytest.mark.parametrize(("raw", "value"), [(None, 20), ("1", 1), ("0050", 50), ("1000", 1000)])
def test_a_limit_is_1_to_the_maximum_its_default_when_absent(raw: str | None, value: int) -> None:
    assert parse_limit(raw, 20, 1000) == value


@pytest.mark.parametrize("raw", ["0", "1001", "9" * 18])
def test_a_limit_out_of_range_names_the_range(raw: str) -> None:
    with pytest.raises(InvalidQueryParameter, match=r"^limit must be between 1 and 1000$"):
        parse_limit(raw, 20, 1000)


@pytest.mark.parametrize("raw", BAD_NUMBERS)
def test_a_limit_that_is_no_number_is_a_query_parameter_error(raw: str) -> None:
    with pytest.raises(InvalidQueryParameter, match=r"^limit must be a non-negative integer$"):
        parse_limit(raw, 20, 1000)


def test_a_query_parameter_error_is_answered_400_with_its_message() -> None:
    assert answer_to(InvalidQueryParameter("limit must be between 1 and 1000")) == (
        400,
        None,
        {"error": "limit must be between 1 and 1000"},
    )


@pytest.mark.parametrize(("raw", "value"), [("0", 0), ("7", 7), ("9" * 18, 10**18 - 1)])
def test_a_job_id_is_up_to_18_digits(raw: str, value: int) -> None:
    assert parse_job_id(raw) == value


@pytest.mark.parametrize("raw", [None, *BAD_NUMBERS])
def test_anything_else_names_no_job(raw: str | None) -> None:
    assert parse_job_id(raw) is None


def test_an_offset_past_its_maximum_names_it() -> None:
    """`/api/jobs` pages by OFFSET: a deeper page is a database scan of that many jobs, on the
    thread every job store call of the tracker shares."""
    assert parse_offset("10000", maximum=10_000) == 10_000
    with pytest.raises(InvalidQueryParameter, match=r"^offset must be at most 10000$"):
        parse_offset("10001", maximum=10_000)


def test_every_way_a_job_store_fails_is_a_503_with_retry_after() -> None:
    for failure in (
        DatabaseUnavailable("the job database did not answer within 5 s; please retry"),
        SubmissionOutcomeUnknown("it may have been kept: a retry with the same key is safe"),
    ):
        status, retry_after, body = answer_to(failure)
        assert (status, retry_after is not None) == (503, True), failure
        assert body["error"], failure
    assert answer_to(SubmissionOutcomeUnknown("it may have been kept"))[2] == {
        "error": "it may have been kept"
    }
