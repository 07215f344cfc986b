"""Reading a job file: the spec's JSON body as it is, or a CSV of `store_id,visit_time,image_url`
rows grouped into visits. No HTTP here."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

CSV_COLUMNS = ("store_id", "visit_time", "image_url")


class JobFileError(ValueError):
    """The file cannot be read as a job; the message says where and why."""


def load_job_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise JobFileError(f"cannot read {path}: {exc}") from None
    if path.suffix.lower() == ".csv" or not text.lstrip().startswith(("{", "[")):
        return visits_from_csv(text, str(path))
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JobFileError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise JobFileError(f"{path} must hold a JSON object with count and visits")
    return payload


def visits_from_csv(text: str, name: str = "CSV") -> dict[str, Any]:
    """One visit per (store_id, visit_time), in order of first appearance, with its image URLs
    in row order. A header row naming the three columns is optional."""
    rows = list(csv.reader(io.StringIO(text)))
    if rows and tuple(cell.strip().lower() for cell in rows[0]) == CSV_COLUMNS:
        rows = rows[1:]
        first_line = 2
    else:
        first_line = 1
    visits: dict[tuple[str, str], list[str]] = {}
    for line, row in enumerate(rows, start=first_line):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != 3:
            raise JobFileError(
                f"{name} line {line}: expected 3 columns (store_id,visit_time,image_url),"
                f" got {len(row)}"
            )
        store_id, visit_time, image_url = (cell.strip() for cell in row)
        visits.setdefault((store_id, visit_time), []).append(image_url)
    if not visits:
        raise JobFileError(f"{name} has no rows")
    return {
        "count": len(visits),
        "visits": [
            {"store_id": store_id, "visit_time": visit_time, "image_url": urls}
            for (store_id, visit_time), urls in visits.items()
        ],
    }
