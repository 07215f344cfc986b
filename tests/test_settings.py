from __future__ import annotations

import pickle

import pytest

from core.settings import PACKAGE_ROOT, Settings, SettingsError
from core.settings_table import markdown_table


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SUBMIT_RATE", "0"),
        ("SUBMIT_RATE", "nan"),
        ("SUBMIT_RATE", "1e-320"),  # 1/rate overflows: a 500 for the next client refused
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
            "IMAGE_SERVICE_MAX_IMAGE_PIXELS": "1000",
        }
    )
    assert (settings.max_store_id_length, settings.max_queued_images) == (32, 10)
    assert (settings.tracker_timeout, settings.decode_pixel_budget) == (2.5, 1000)


def test_the_readme_table_is_the_one_the_declarations_give() -> None:
    readme = (PACKAGE_ROOT / "README.md").read_text()
    table = readme.split("checks it -->\n", 1)[1].split("\n<!-- end of settings table -->", 1)[0]
    assert table == markdown_table(), (
        "run `python -m core.settings_table` and paste it into README.md"
    )


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
    # Pickled by its import path: a rolling upgrade unpickles it in older and newer code alike.
    assert (Settings.__module__, Settings.__qualname__) == ("core.settings", "Settings")


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


# The floor of each timing setting (seconds; submissions per second for SUBMIT_RATE): below it
# a value breaks the service instead of tuning it. 0 is "no timeout" to aiohttp, a loop that
# sleeps 0 s spins, a lease renewed every few ms or gauges counted every few ms keep the job
# store busy, and 1/SUBMIT_RATE overflows.
FLOORS = [
    ("LEASE_SECONDS", "0.3"),
    ("REPORT_INTERVAL", "0.01"),
    ("CONNECT_TIMEOUT", "0.1"),
    ("READ_TIMEOUT", "0.1"),
    ("DOWNLOAD_TIMEOUT", "0.1"),
    ("RETRY_BACKOFF", "0.01"),
    ("SUBMIT_RATE", "0.001"),
    ("TRACKER_TIMEOUT", "0.1"),
    ("FLUSH_INTERVAL", "0.01"),
    ("NODE_REFRESH_INTERVAL", "0.1"),
    ("METRICS_INTERVAL", "1"),
    ("CALLBACK_BACKOFF", "0.01"),
    ("CALLBACK_TIMEOUT", "0.1"),
    ("DATABASE_TIMEOUT", "0.5"),
]
SECONDS = [name for name, _floor in FLOORS if name != "SUBMIT_RATE"]


def test_every_timing_setting_has_a_floor_here() -> None:
    """A float setting added later is a timing one or says why not: FETCH_AHEAD is a ratio,
    where 0 means nothing fetched ahead; AUTOSCALE_RETIRE_SECONDS is a wait no loop spins on,
    where 0 retires an idle node's workers at the tracker's next look (a second)."""
    floats = {name for name, field in Settings.model_fields.items() if field.annotation is float}
    exempt = {"fetch_ahead", "autoscale_retire_seconds"}
    assert floats - exempt == {name.lower() for name, _floor in FLOORS}


@pytest.mark.parametrize(("name", "floor"), FLOORS)
def test_a_timing_setting_takes_its_floor(name: str, floor: str) -> None:
    settings = Settings.from_env({f"IMAGE_SERVICE_{name}": floor})
    assert getattr(settings, name.lower()) == float(floor)


@pytest.mark.parametrize(("name", "floor"), FLOORS)
@pytest.mark.parametrize("below", ["zero", "half the floor"])
def test_a_timing_setting_below_its_floor_is_refused_naming_it(
    name: str, floor: str, below: str
) -> None:
    value = "0" if below == "zero" else repr(float(floor) / 2)
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({f"IMAGE_SERVICE_{name}": value})
    assert str(refused.value) == (
        f"IMAGE_SERVICE_{name}: input should be greater than or equal to {float(floor):g}, "
        f"got {value!r}"
    )


@pytest.mark.parametrize("name", SECONDS)
def test_a_wait_of_a_day_is_taken_and_a_longer_one_refused(name: str) -> None:
    assert getattr(Settings.from_env({f"IMAGE_SERVICE_{name}": "86400"}), name.lower()) == 86400
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({f"IMAGE_SERVICE_{name}": "1e300"})
    assert str(refused.value) == (
        f"IMAGE_SERVICE_{name}: input should be less than or equal to 86400, got '1e300'"
    )


def test_a_simulated_gpu_delay_longer_than_a_day_is_refused() -> None:
    assert Settings.from_env({"IMAGE_SERVICE_GPU_DELAY": "0-86400"}).gpu_delay == (0, 86400)
    with pytest.raises(SettingsError, match="IMAGE_SERVICE_GPU_DELAY must satisfy"):
        Settings.from_env({"IMAGE_SERVICE_GPU_DELAY": "0-1e300"})


def test_the_readme_table_shows_each_timing_setting_s_range() -> None:
    rows = {row.split(" | ")[0].strip("| `"): row for row in markdown_table().splitlines()}
    assert "| 0.1 to 86400 |" in rows["IMAGE_SERVICE_CONNECT_TIMEOUT"]
    assert "| 0.3 to 86400 |" in rows["IMAGE_SERVICE_LEASE_SECONDS"]
    assert "| at least 0.001 |" in rows["IMAGE_SERVICE_SUBMIT_RATE"]


def test_a_node_s_decode_budget_must_hold_the_largest_image_allowed() -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"IMAGE_SERVICE_DECODE_PIXEL_BUDGET": "99999999"})
    assert str(refused.value) == (
        "IMAGE_SERVICE_DECODE_PIXEL_BUDGET (99999999) must be at least "
        "IMAGE_SERVICE_MAX_IMAGE_PIXELS (100000000): a node decodes one image of that size "
        "at a time within it"
    )
    assert (
        Settings.from_env({"IMAGE_SERVICE_DECODE_PIXEL_BUDGET": "100000000"}).decode_pixel_budget
        == 10**8
    )
