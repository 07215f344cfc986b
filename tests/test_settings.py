from __future__ import annotations

import pickle

import pytest

from core.settings import PACKAGE_ROOT, Settings, SettingsError, markdown_table


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SUBMIT_RATE", "0"),
        ("SUBMIT_RATE", "nan"),
        ("TRACKER_TIMEOUT", "0"),
        ("CONNECT_TIMEOUT", "inf"),
        ("MAX_STORE_ID_LENGTH", "0"),
        ("MAX_QUEUED_IMAGES", "-5"),
        ("MAX_IMAGE_ATTEMPTS", "x"),
    ],
)
def test_a_value_the_service_cannot_use_is_refused_naming_it(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"IMAGE_SERVICE_{name}"):
        Settings.from_env({f"IMAGE_SERVICE_{name}": value})


def test_the_new_limits_are_read() -> None:
    settings = Settings.from_env(
        {
            "IMAGE_SERVICE_MAX_STORE_ID_LENGTH": "32",
            "IMAGE_SERVICE_MAX_QUEUED_IMAGES": "10",
            "IMAGE_SERVICE_TRACKER_TIMEOUT": "2.5",
            "IMAGE_SERVICE_DECODE_PIXEL_BUDGET": "1000",
        }
    )
    assert (settings.max_store_id_length, settings.max_queued_images) == (32, 10)
    assert (settings.tracker_timeout, settings.decode_pixel_budget) == (2.5, 1000)


def test_the_readme_table_is_the_one_the_declarations_give() -> None:
    readme = (PACKAGE_ROOT / "README.md").read_text()
    table = readme.split("checks it -->\n", 1)[1].split("\n<!-- end of settings table -->", 1)[0]
    assert table == markdown_table(), "run `python -m core.settings` and paste it into README.md"


def test_a_setting_given_in_a_mapping_ignores_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMAGE_SERVICE_PORT", "7000")
    assert Settings.from_env().port == 7000
    assert Settings.from_env({}).port == 8000
    assert Settings.from_env({"IMAGE_SERVICE_PORT": " 9000 "}).port == 9000


def test_lists_and_ranges_are_read_as_an_operator_writes_them() -> None:
    settings = Settings.from_env(
        {
            "IMAGE_SERVICE_API_KEYS": "a, b,,c",
            "IMAGE_SERVICE_GPU_DELAY": "0-0.5",
            "IMAGE_SERVICE_RAY_START_ARGS": "--num-cpus=2  --block",
            "IMAGE_SERVICE_HOST": "",
        }
    )
    assert settings.api_keys == ("a", "b", "c")
    assert settings.gpu_delay == (0.0, 0.5)
    assert settings.ray_start_args == ("--num-cpus=2", "--block")
    assert settings.host == "127.0.0.1"  # empty is unset


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "9" * 5000),  # past Python's int digits limit
        ("PORT", "70000"),
        ("GPU_DELAY", "0.4-0.1"),
        ("GPU_DELAY", "0-inf"),
        ("API_KEYS", "key-\udcff"),  # a lone surrogate, as os.environ decodes bad bytes
        ("INCLUDE_DASHBOARD", "maybe"),
    ],
)
def test_hostile_values_are_refused_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"IMAGE_SERVICE_{name}") as refused:
        Settings.from_env({f"IMAGE_SERVICE_{name}": value})
    assert len(str(refused.value)) < 300


def test_settings_cross_to_ray_processes_whole() -> None:
    settings = Settings.from_env({"IMAGE_SERVICE_ALLOWED_HOSTS": "10.0.0.0/8"})
    assert pickle.loads(pickle.dumps(settings)) == settings


@pytest.mark.parametrize("url", ["postgresql://u:pw@db:5432/jobs", "postgres://u@db/jobs"])
def test_a_postgresql_url_is_taken_and_kept_out_of_the_repr(url: str) -> None:
    settings = Settings.from_env({"IMAGE_SERVICE_DATABASE_URL": url})
    assert settings.database_url == url
    assert Settings.from_env({}).database_url == ""
    assert "u@db" not in repr(settings)


@pytest.mark.parametrize(
    "url", ["mysql://u:s3cret@db/jobs", "/var/lib/jobs.sqlite3", "s3cret postgresql://"]
)
def test_a_database_url_of_another_kind_is_refused_without_quoting_it(url: str) -> None:
    with pytest.raises(SettingsError, match="IMAGE_SERVICE_DATABASE_URL must start with") as no:
        Settings.from_env({"IMAGE_SERVICE_DATABASE_URL": url})
    assert "s3cret" not in str(no.value) and "jobs" not in str(no.value)
    assert no.value.__cause__ is None and no.value.__suppress_context__
