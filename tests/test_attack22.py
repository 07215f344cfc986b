"""Adversarial review of attack22's changes: each test fails on the current code for a real
defect. No Ray, no service, no PostgreSQL."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.imagehost import ExampleServer
from imgjobs.jobfile import JobFileError, load_job_file, visits_from_csv

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def example_server() -> Iterator[ExampleServer]:
    server = ExampleServer(0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _port(server: ExampleServer) -> int:
    return int(server.server_address[1])


def test_imagehost_answers_a_status_path_of_superscript_digits(
    example_server: ExampleServer,
) -> None:
    # "²" (0xB2) is latin-1, as http.server decodes the request line; str.isdigit() says
    # True but int() raises, so the handler dies and the client gets no answer at all.
    with socket.create_connection(("127.0.0.1", _port(example_server)), timeout=5) as sock:
        sock.sendall(b"GET /status/\xb2\xb2\xb2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 404"), answer


def test_imagehost_status_204_sends_no_body(example_server: ExampleServer) -> None:
    # A 204 has no content (RFC 9110 15.3.5): a client reads the next answer right after its
    # header block. The server writes "HTTP 204\n" there anyway, so on a kept-alive
    # connection the next answer starts with those bytes and cannot be parsed.
    with socket.create_connection(("127.0.0.1", _port(example_server)), timeout=5) as sock:
        sock.sendall(
            b"GET /status/204 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /status/200 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 204")
    assert rest.startswith(b"HTTP/1.1 200"), rest[:40]


def test_a_csv_cell_past_the_csv_field_limit_is_a_job_file_error(tmp_path: Path) -> None:
    # csv's default field_size_limit is 131072; past it csv.Error escapes, which the CLI does
    # not catch (only JobFileError among file errors): a traceback instead of one line.
    path = tmp_path / "big.csv"
    path.write_text("S1,2025-01-01,http://a.test/" + "x" * 140_000 + "\n")
    with pytest.raises(JobFileError, match=r"big\.csv line 1: field larger than field limit"):
        load_job_file(path)  # one line for the user, not the csv module's traceback


def test_csv_text_with_old_mac_line_ends_is_read_or_refused_cleanly() -> None:
    # visits_from_csv on text with bare CR line ends raises csv.Error ("new-line character
    # seen in unquoted field") rather than reading the rows or raising JobFileError.
    text = "S1,2025-01-01,http://a.test/1.jpg\rS2,2025-01-02,http://a.test/2.jpg\r"
    with pytest.raises(JobFileError, match="CSV line 1: new-line character seen"):
        visits_from_csv(text)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_header_after_a_leading_blank_line_is_still_the_header() -> None:
    # Blank lines are skipped anywhere, but the header is recognised only on physical line 1:
    # after one blank line it becomes a visit with store_id "store_id", which the service
    # then refuses ("visit_time must be an ISO 8601 date") as line 2 of the file.
    text = "\nstore_id,visit_time,image_url\nS1,2025-01-01,http://a.test/1.jpg\n"
    assert visits_from_csv(text)["visits"] == [
        {"store_id": "S1", "visit_time": "2025-01-01", "image_url": ["http://a.test/1.jpg"]}
    ]
