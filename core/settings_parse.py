"""Reading the settings from the environment: the source that reads a mapping, the one-line
description of a refused value, and the parsers of values that are not plain types."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource

from core.text import safe_text

ENV_PREFIX = "IMAGE_SERVICE_"

# A refused value is quoted this far: an environment variable can be any length.
QUOTED_CHARS = 80

# The longest wait any timing setting takes: past a day each is a mistake (results reported or
# saved a day late, a timeout that never fires), and what is built on them stays finite
# (PostgreSQL refuses a lease interval past ~9e12 s: no tracker would ever hold the lease).
MAX_SECONDS = 86_400.0


class MappingSource(EnvSettingsSource):
    """Settings read from a mapping (the process environment, or one given), each value with
    its surrounding blanks removed: a variable set to blanks is unset, as one set empty."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {
            name.lower(): value.strip() for name, value in self._environ.items() if value.strip()
        }


def describe(error: ValidationError) -> str:
    first = error.errors()[0]
    name = f"{ENV_PREFIX}{str(first['loc'][0]).upper()}" if first["loc"] else "the settings"
    message = first["msg"]
    if message.startswith("Value error, "):
        return message.removeprefix("Value error, ")
    return f"{name}: {message[0].lower()}{message[1:]}, got {quoted(first['input'])}"


def quoted(value: Any) -> str:
    return safe_text(repr(value), QUOTED_CHARS)


def parse_delay_range(text: str) -> tuple[float, float]:
    """Parse `LOW-HIGH` seconds (or a single number) into an ordered pair."""
    parts = text.split("-")
    try:
        if len(parts) == 1:
            low = high = float(parts[0])
        elif len(parts) == 2:
            low, high = float(parts[0]), float(parts[1])
        else:
            raise ValueError(text)
    except ValueError:
        raise ValueError(
            f"{ENV_PREFIX}GPU_DELAY must look like 0.1-0.4 (seconds), got {quoted(text)}"
        ) from None
    if not 0 <= low <= high <= MAX_SECONDS:
        raise ValueError(
            f"{ENV_PREFIX}GPU_DELAY must satisfy 0 <= low <= high <= {MAX_SECONDS:g}, "
            f"got {quoted(text)}"
        )
    return low, high
