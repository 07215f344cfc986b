"""Property-based fuzzing of the running API: whatever arrives, the answer is a documented
2xx or 4xx with a JSON body, never a 5xx, and the service keeps answering correctly."""

from __future__ import annotations

import json
from typing import Any

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.client import Client

# Text as hostile clients send it: lone surrogates (valid JSON as "\ud800"), control characters.
HOSTILE_TEXT = st.text(
    alphabet=st.characters(categories=["Cs", "Cc", "Lu", "Ll", "Nd", "Zs", "So"]), max_size=20
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**18, max_value=10**4000)  # past 64 bits and float range
    | st.floats()  # NaN and Infinity included: Python's JSON writes and reads them
    | st.text(max_size=20)
    | HOSTILE_TEXT
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
URLS = (
    st.sampled_from(
        ["http://127.0.0.1:9/a.png", "https://a.test/x.jpg", "ftp://a/b", "", "http://", "x" * 3000]
    )
    | st.text(max_size=30)
    | HOSTILE_TEXT.map(lambda text: f"http://a.test/{text}")
)
VISITS = st.fixed_dictionaries(
    {},
    optional={
        "store_id": st.sampled_from(["S00339218", "", "RP00001", "nope", "S" * 300])
        | HOSTILE_TEXT
        | JSON_VALUES,
        "image_url": st.lists(URLS, max_size=3) | JSON_VALUES,
        "visit_time": st.sampled_from(
            ["2025-03-11", "2025-13-01", "2025-03-11T10:00:00Z", "2025-03-11T10:00:00." + "1" * 99]
        )
        | JSON_VALUES,
    },
)
BODIES = (
    st.fixed_dictionaries(
        {},
        optional={
            "count": st.integers(-2, 4) | JSON_VALUES,
            "visits": st.lists(VISITS, max_size=3) | JSON_VALUES,
        },
    )
    | JSON_VALUES
)

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,  # the same inputs on every machine: no examples replayed from earlier runs
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def check(response: requests.Response, allowed: set[int]) -> Any:
    assert response.status_code in allowed, (response.status_code, response.text)
    return response.json()


def nested(depth: int) -> bytes:
    return b'{"count": 1, "visits": ' + b"[" * depth + b"]" * depth + b"}"


@FUZZ
@given(body=BODIES)
def test_any_json_body_gets_201_or_a_400_error(client: Client, body: Any) -> None:
    raw = json.dumps(body).encode()  # NaN and Infinity as Python writes them; surrogates escaped
    response = requests.post(f"{client.base_url}/api/submit/", data=raw, timeout=60)
    answer = check(response, {201, 400, 413})
    assert set(answer) in ({"job_id"}, {"error"})


@FUZZ
@given(depth=st.integers(1, 200_000))
def test_any_nesting_depth_gets_a_json_answer(client: Client, depth: int) -> None:
    response = requests.post(f"{client.base_url}/api/submit/", data=nested(depth), timeout=60)
    assert set(check(response, {400})) == {"error"}


@FUZZ
@given(
    raw=st.binary(max_size=200),
    content_type=st.sampled_from(["application/json", "text/plain", "x/y"]),
)
def test_any_bytes_get_a_json_error(client: Client, raw: bytes, content_type: str) -> None:
    response = requests.post(
        f"{client.base_url}/api/submit/",
        data=raw,
        headers={"Content-Type": content_type},
        timeout=30,
    )
    answer = check(response, {201, 400})
    assert set(answer) in ({"job_id"}, {"error"})


@FUZZ
@given(
    jobid=st.text(max_size=25),
    extra=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)
def test_any_status_query_is_200_or_400(client: Client, jobid: str, extra: dict[str, str]) -> None:
    params = {**extra, "jobid": jobid}
    answer = check(
        requests.get(f"{client.base_url}/api/status", params=params, timeout=30), {200, 400}
    )
    assert answer == {} or answer["status"] in {"ongoing", "completed", "failed"}


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    path=st.sampled_from(
        ["/api/submit/", "/api/status", "/api/results", "/healthz", "/api/x", "/%ff"]
    ),
    query=st.text(max_size=20),
)
def test_any_method_and_path_is_never_a_5xx(
    client: Client, method: str, path: str, query: str
) -> None:
    response = requests.request(method, f"{client.base_url}{path}", params={"q": query}, timeout=30)
    assert response.status_code < 500, (method, path, response.status_code, response.text)


def test_service_still_answers_correctly_after_fuzzing(client: Client) -> None:
    payload = {
        "count": 1,
        "visits": [
            {
                "store_id": "NOT-A-STORE",
                "image_url": ["http://a.test/x"],
                "visit_time": "2025-03-11",
            }
        ],
    }
    job_id = client.submit_ok(payload)
    assert client.wait(job_id) == {
        "status": "failed",
        "job_id": job_id,
        "error": [{"store_id": "NOT-A-STORE", "error": "store_id not in store master"}],
    }
    assert json.loads(requests.get(f"{client.base_url}/healthz", timeout=30).text) == {
        "status": "ok"
    }


# What HTTP lets through to the app (visible ASCII, spaces, and any byte past 0x7f): control
# characters are refused by the HTTP parser itself, before the service sees the request.
HEADER_BYTES = st.binary(min_size=1, max_size=300).filter(
    lambda raw: all(0x20 <= byte < 0x7F or byte >= 0x80 for byte in raw) and raw.strip() == raw
)


@FUZZ
@given(
    name=st.sampled_from(["Idempotency-Key", "Authorization", "Content-Type", "X-Forwarded-For"]),
    value=HEADER_BYTES,
)
def test_any_header_bytes_get_a_json_answer(client: Client, name: str, value: bytes) -> None:
    body = {"count": 1, "visits": [{"store_id": "NOT-A-STORE", "image_url": ["http://a.test/x"],
                                     "visit_time": "2025-03-11"}]}  # fmt: skip
    response = requests.post(
        f"{client.base_url}/api/submit/", json=body, headers={name: value}, timeout=60
    )
    assert set(check(response, {201, 400})) in ({"job_id"}, {"error"})
