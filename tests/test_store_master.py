from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import DEFAULT_STORE_MASTER
from core.store_master import StoreMasterError, load_store_master, parse_store_master


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
