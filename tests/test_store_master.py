from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from core.settings import DEFAULT_STORE_MASTER
from core.store_master import (
    SETTLE_SECONDS,
    StoreMasterCache,
    StoreMasterError,
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


def test_cache_takes_a_renamed_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "master.csv"
    write(path, ["S1"])
    cache = StoreMasterCache(path)
    assert cache.current() == {"S1"}
    write(tmp_path / "new.csv", ["S1", "S2"])
    os.replace(tmp_path / "new.csv", path)
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
