"""Reading a job file: the spec's JSON body as it is, or a CSV of `store_id,visit_time,image_url`
rows grouped into visits, with the line each came from. No HTTP here."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CSV_COLUMNS = ("store_id", "visit_time", "image_url")
# How the service names a field of the body it refuses: `visits[3].image_url[2] must be ...`.
FIELD_PATH = re.compile(r"visits\[(\d+)\]\.(store_id|visit_time|image_url)(?:\[(\d+)\])? ")


class JobFileError(ValueError):
    """The file cannot be read as a job; the message says where and why."""


@dataclass(frozen=True)
class CsvOrigin:
    """Where each visit of a body built from CSV came from: per visit, the line of each of its
    image URLs, in order. Its store_id and visit_time are those of its first line."""

    name: str
    lines: tuple[tuple[int, ...], ...]

    def locate(self, message: str) -> str:
        """A message about the body (`visits[3].image_url[2] must be ...`) as one about the file
        (`visits.csv line 57, column 3 (image_url): must be ...`); others as they are."""
        found = FIELD_PATH.match(message)
        if found is None:
            return message
        visit, column, image = int(found[1]), found[2], int(found[3] or 0)
        if visit >= len(self.lines) or image >= len(self.lines[visit]):
            return message
        line = self.lines[visit][image if column == "image_url" else 0]
        number = CSV_COLUMNS.index(column) + 1
        return f"{self.name} line {line}, column {number} ({column}): {message[found.end() :]}"


@dataclass(frozen=True)
class JobFile:
    """The body to submit, and for a CSV file where its parts came from."""

    payload: dict[str, Any]
    origin: CsvOrigin | None = None


def load_job_file(path: Path) -> JobFile:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise JobFileError(f"cannot read {path}: {exc}") from None
    if path.suffix.lower() == ".csv" or not text.lstrip().startswith(("{", "[")):
        return job_from_csv(text, str(path))
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JobFileError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise JobFileError(f"{path} must hold a JSON object with count and visits")
    return JobFile(payload)


def visits_from_csv(text: str, name: str = "CSV") -> dict[str, Any]:
    return job_from_csv(text, name).payload


def job_from_csv(text: str, name: str = "CSV") -> JobFile:
    """One visit per (store_id, visit_time), in order of first appearance, with its image URLs
    in row order. A header row naming the three columns is optional. Lines are counted as an
    editor does: a row whose quoted cell spans lines is named by the line it starts on."""
    reader = csv.reader(io.StringIO(text))
    visits: dict[tuple[str, str], list[tuple[str, int]]] = {}
    read_before = 0
    first_row = True
    rows = iter(reader)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as exc:  # a cell past csv's size limit, a bare carriage return, ...
            raise JobFileError(f"{name} line {read_before + 1}: {exc}") from None
        line, read_before = read_before + 1, reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        is_header = first_row and tuple(cell.strip().lower() for cell in row) == CSV_COLUMNS
        first_row = False
        if is_header:
            continue
        if len(row) != 3:
            raise JobFileError(
                f"{name} line {line}: expected 3 columns (store_id,visit_time,image_url),"
                f" got {len(row)}"
            )
        store_id, visit_time, image_url = (cell.strip() for cell in row)
        visits.setdefault((store_id, visit_time), []).append((image_url, line))
    if not visits:
        raise JobFileError(f"{name} has no rows")
    payload = {
        "count": len(visits),
        "visits": [
            {"store_id": store_id, "visit_time": visit_time, "image_url": [u for u, _ in images]}
            for (store_id, visit_time), images in visits.items()
        ],
    }
    origin = CsvOrigin(name, tuple(tuple(n for _, n in images) for images in visits.values()))
    return JobFile(payload, origin)
