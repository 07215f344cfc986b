from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from core.errors import StoreMasterError
from core.settings import DEFAULT_STORE_MASTER
from core.store_master import (
    SETTLE_SECONDS,
    StoreMasterCache,
    load_store_master,
    parse_store_master,
)


def test_comma_separated_with_spaces_and_bom() -> None:
    text = "\ufeffAreaCode, StoreName, StoreID\n7,Store A, S1 \n7,Store B,S2\n\n"
    assert parse_store_master(text) == {"S1", "S2"}


def test_tab_separated() -> None:
    assert parse_store_master("AreaCode\tStoreName\tStoreID\n1\tA, Ltd\tX9\n") == {"X9"}


def test_header_is_required() -> None:
    with pytest.raises(StoreMasterError, match="StoreID"):
        parse_store_master("1,Store A,S1\n")


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreMasterError, match="cannot read"):
        load_store_master(tmp_path / "absent.csv")


def test_bundled_master_has_the_spec_ids_and_a_realistic_set() -> None:
    ids = load_store_master(DEFAULT_STORE_MASTER)
    assert {"S00339218", "S01408764", "RP00001", "RP01000"} <= ids
    assert len(ids) == 1002


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def write(path: Path, ids: list[str]) -> None:
    path.write_text("AreaCode,StoreName,StoreID\n" + "".join(f"1,x,{i}\n" for i in ids))


def test_cache_takes_a_file_renamed_over_it_once_still(tmp_path: Path) -> None:
    path = tmp_path / "master.csv"
    write(path, ["S1"])
    clock = Clock()
    cache = StoreMasterCache(path, clock)
    assert cache.current() == {"S1"}
    write(tmp_path / "new.csv", ["S1", "S2"])
    os.replace(tmp_path / "new.csv", path)
    # A hair past the settle time: st_mtime (a float) can round below st_mtime_ns.
    clock.now = path.stat().st_mtime + SETTLE_SECONDS + 0.001
    assert cache.current() == {"S1", "S2"}


def test_cache_waits_for_a_file_rewritten_in_place_to_be_still(tmp_path: Path) -> None:
    path = tmp_path / "master.csv"
    write(path, ["S1", "S2", "S3"])
    clock = Clock()
    cache = StoreMasterCache(path, clock)
    assert cache.current() == {"S1", "S2", "S3"}
    # A writer part-way through a rewrite in place: the first rows only, for now.
    with open(path, "w") as half_written:
        half_written.write("AreaCode,StoreName,StoreID\n1,x,S1\n")
    clock.now = path.stat().st_mtime + 0.1
    assert cache.current() == {"S1", "S2", "S3"}  # the last good copy
    clock.now += SETTLE_SECONDS
    assert cache.current() == {"S1"}  # still for long enough: taken


def test_cache_keeps_the_last_good_copy_when_the_file_goes(tmp_path: Path) -> None:
    path = tmp_path / "master.csv"
    write(path, ["S1"])
    cache = StoreMasterCache(path)
    assert cache.current() == {"S1"}
    path.unlink()
    assert cache.current() == {"S1"}
    with pytest.raises(StoreMasterError, match="cannot be read"):
        StoreMasterCache(path).current()


GOOD = "AreaCode,StoreName,StoreID\n1,Store A,S1\n"
# What a spreadsheet saves as "CSV" on many desktops: Windows-1252, not UTF-8.
CP1252 = "AreaCode,StoreName,StoreID\n1,Caf\u00e9 Bleu,S2\n".encode("cp1252")
# A quote left open swallows the rest of the file into one field, past the csv module's limit.
OPEN_QUOTE = ('AreaCode,StoreName,StoreID\n1,"Store A,S3\n' + "2,Store B,S4\n" * 20_000).encode()


def replace(path: Path, data: bytes) -> None:
    """Replace the file by a rename."""
    new = path.with_suffix(".new")
    new.write_bytes(data)
    os.replace(new, path)


@pytest.mark.parametrize("data", [CP1252, OPEN_QUOTE], ids=["not UTF-8", "quote left open"])
def test_an_unreadable_new_file_leaves_the_last_good_copy_serving(
    tmp_path: Path, data: bytes
) -> None:
    path = tmp_path / "store_master.csv"
    path.write_text(GOOD)
    cache = StoreMasterCache(path)
    assert cache.current() == {"S1"}
    replace(path, data)
    assert cache.current() == {"S1"}  # not a UnicodeDecodeError or csv.Error (a 500)


@pytest.mark.parametrize("data", [CP1252, OPEN_QUOTE], ids=["not UTF-8", "quote left open"])
def test_an_unreadable_first_file_is_a_store_master_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "store_master.csv"
    path.write_bytes(data)
    with pytest.raises(StoreMasterError):
        StoreMasterCache(path).current()


def test_a_file_deleted_and_written_again_is_taken_only_once_still(tmp_path: Path) -> None:
    # `rm master.csv && cp new.csv master.csv`, `install`, or any writer that unlinks first:
    # a new inode, being filled in place, is not taken half written.
    path = tmp_path / "store_master.csv"
    path.write_text(GOOD + "1,Store B,S2\n1,Store C,S3\n")
    clock = Clock()
    clock.now = path.stat().st_mtime + 60
    cache = StoreMasterCache(path, clock)
    assert cache.current() == {"S1", "S2", "S3"}
    os.link(path, tmp_path / "old.csv")  # the old inode stays in use, as by an open reader
    path.unlink()
    with open(path, "w") as half_written:
        half_written.write(GOOD)
    clock.now = path.stat().st_mtime + 0.1  # the writer is part-way through
    assert cache.current() == {"S1", "S2", "S3"}
