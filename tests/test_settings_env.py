"""Settings read from the environment as an operator writes it: blanks around a value, a
variable set to blanks, flags, a path that is not UTF-8; the process environment and a mapping
of it agree."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import DEFAULT_STORE_MASTER, Settings, SettingsError

pytestmark = pytest.mark.timeout(30)


def _clear_service_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("IMAGE_SERVICE_"):
            monkeypatch.delenv(name)


# A variable set to blanks in the environment (`IMAGE_SERVICE_HOST=" "` in a unit file, a
# Kubernetes manifest or a shell script) was unset before: the default applied. The mapping
# path (`from_env({...})`, what the unit tests use) still treats it so; the process
# environment, which `make run`, the Serve replica and the edge read, does not.
@pytest.mark.parametrize(
    ("name", "blank", "attribute", "default"),
    [
        ("HOST", " ", "host", "127.0.0.1"),
        ("DATA_DIR", " ", "data_dir", Path("data/run").resolve()),
        ("STORE_MASTER", "  ", "store_master", DEFAULT_STORE_MASTER),
        ("PORT", "  ", "port", 8000),
        ("GPU_DELAY", " ", "gpu_delay", (0.1, 0.4)),
        ("ALLOW_PRIVATE_URLS", " ", "allow_private_urls", False),
        ("INCLUDE_DASHBOARD", "\t", "include_dashboard", True),
    ],
)
def test_a_blank_variable_in_the_process_environment_is_unset(
    monkeypatch: pytest.MonkeyPatch, name: str, blank: str, attribute: str, default: object
) -> None:
    _clear_service_environment(monkeypatch)
    monkeypatch.setenv(f"IMAGE_SERVICE_{name}", blank)
    assert getattr(Settings.from_env(), attribute) == default


@pytest.mark.parametrize(
    ("name", "value"),
    [("HOST", " "), ("DATA_DIR", " "), ("PORT", "  "), ("ALLOW_PRIVATE_URLS", " ")],
)
def test_the_process_environment_and_a_mapping_of_it_give_the_same_settings(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    _clear_service_environment(monkeypatch)
    mapping = {f"IMAGE_SERVICE_{name}": value}
    from_mapping = Settings.from_env(mapping)
    monkeypatch.setenv(f"IMAGE_SERVICE_{name}", value)
    assert Settings.from_env() == from_mapping


# Every other setting has its surrounding blanks stripped (a port " 9000 " is 9000); the
# flags were stripped too before (`get()` stripped every value).
@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("ALLOW_PRIVATE_URLS", " 1 ", True),
        ("ALLOW_PRIVATE_URLS", "1\n", True),
        ("INCLUDE_DASHBOARD", "off ", False),
        ("FAST_INGRESS", " yes", True),
    ],
)
def test_a_flag_with_surrounding_blanks_is_read(name: str, value: str, expected: bool) -> None:
    settings = Settings.from_env({f"IMAGE_SERVICE_{name}": value})
    assert getattr(settings, name.lower()) is expected


# `int()` and `float()` read any Unicode decimal digits; pydantic only ASCII ones.
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "\u0668\u0660\u0660\u0660"),  # Arabic-Indic digits
        ("CONCURRENCY", "\uff16\uff14"),  # full-width digits
        ("FETCH_AHEAD", "\u0661"),
    ],
)
def test_a_number_is_written_in_ascii_digits(name: str, value: str) -> None:
    # The settings before pydantic read these through int(); an operator reading the
    # environment would not see 8000 in them, so they are refused, naming the variable.
    with pytest.raises(SettingsError, match=f"IMAGE_SERVICE_{name}"):
        Settings.from_env({f"IMAGE_SERVICE_{name}": value})


def test_a_data_dir_whose_name_is_not_utf8_is_still_a_path() -> None:
    # os.environ hands a directory name holding the byte 0xff over as "\udcff"
    # (surrogateescape); Linux paths are bytes, and the old settings took it as the Path it is.
    settings = Settings.from_env({"IMAGE_SERVICE_DATA_DIR": "/srv/jobs-\udcff"})
    assert settings.data_dir == Path("/srv/jobs-\udcff")
