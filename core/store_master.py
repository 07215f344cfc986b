"""Loading the Store Master CSV (`AreaCode, StoreName, StoreID`) into a set of known store ids."""

from __future__ import annotations

import csv
import io
from pathlib import Path

REQUIRED_COLUMNS = ("AreaCode", "StoreName", "StoreID")


class StoreMasterError(ValueError):
    """The Store Master file is missing, unreadable or lacks the required header."""


def parse_store_master(text: str) -> frozenset[str]:
    """Return the store ids of a comma- or tab-separated Store Master with a header row."""
    first_line = text.split("\n", 1)[0]
    delimiter = "\t" if first_line.count("\t") > first_line.count(",") else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = [column.strip().lstrip("\ufeff") for column in next(reader)]
    except StopIteration:
        raise StoreMasterError("store master is empty") from None
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if missing:
        raise StoreMasterError(f"store master header lacks {', '.join(missing)}")
    id_column = header.index("StoreID")
    return frozenset(
        row[id_column].strip() for row in reader if len(row) > id_column and row[id_column].strip()
    )


def load_store_master(path: Path) -> frozenset[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise StoreMasterError(f"cannot read store master {path}: {exc.strerror}") from None
    return parse_store_master(text)
