from __future__ import annotations

import json
import logging

from core.logs import JsonFormatter


def record(message: str, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("actors.tracker", logging.INFO, __file__, 1, message, (), None)
    made.__dict__.update(extra)
    return made


def test_a_line_about_a_job_carries_its_id_as_a_field() -> None:
    line = json.loads(JsonFormatter().format(record("job finished", job_id=42, images=7)))
    assert {k: line[k] for k in ("level", "logger", "message", "job_id", "images")} == {
        "level": "info",
        "logger": "actors.tracker",
        "message": "job finished",
        "job_id": 42,
        "images": 7,
    }
    assert line["ts"].endswith("Z")


def test_other_attributes_stay_out_of_the_line() -> None:
    line = json.loads(JsonFormatter().format(record("hello", password="x")))
    assert "password" not in line and "job_id" not in line
