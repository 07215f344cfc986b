"""Loading the Store Master CSV (`AreaCode, StoreName, StoreID`) into a set of known store ids."""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable
from pathlib import Path

from core.errors import StoreMasterError

REQUIRED_COLUMNS = ("AreaCode", "StoreName", "StoreID")

log = logging.getLogger(__name__)


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
    except UnicodeDecodeError as exc:
        raise StoreMasterError(f"store master {path} is not UTF-8: {exc.reason}") from None
    try:
        return parse_store_master(text)
    except csv.Error as exc:
        raise StoreMasterError(f"store master {path} is not valid CSV: {exc}") from None


# A changed file is taken once it has been still this long: a writer part-way through would
# otherwise hand the service half of the store ids.
SETTLE_SECONDS = 1.0


def _stamp(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class StoreMasterCache:
    """The known store ids, read again when the file changes (checked at most once per submit).

    A change is taken once the file has been still for `SETTLE_SECONDS` and did not change
    while it was read: however it was written (in place, deleted and written again, renamed
    over), a writer part-way through is never taken. Until then, and while the file is gone or
    unreadable, the last good copy serves; `StoreMasterError` only when there never was one.
    """

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._clock = clock
        self._stamp: tuple[int, int, int] | None = None
        self._ids: frozenset[str] = frozenset()

    def current(self) -> frozenset[str]:
        try:
            self._reload_if_changed()
        except (OSError, StoreMasterError) as exc:
            if self._stamp is None:
                raise StoreMasterError(f"the store master cannot be read: {exc}") from None
            log.warning("store master not reloaded, the last good copy serves: %s", exc)
        return self._ids

    def _reload_if_changed(self) -> None:
        stamp = _stamp(self._path)
        if stamp == self._stamp:
            return
        if self._stamp is not None and self._clock() - stamp[2] / 1e9 < SETTLE_SECONDS:
            return  # written moments ago: perhaps not finished
        ids = load_store_master(self._path)
        if _stamp(self._path) != stamp:
            raise StoreMasterError("the file changed while it was read")
        self._ids, self._stamp = ids, stamp
