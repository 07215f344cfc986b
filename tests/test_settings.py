from __future__ import annotations

import pytest

from core.settings import Settings, SettingsError


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
