"""The README's configuration table, rendered from the `Settings` declarations: a row per
setting with its variable, default, allowed range and meaning. `python -m core.settings_table`
prints it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from core.settings import ENV_PREFIX, PACKAGE_ROOT, Settings


def shown(value: Any) -> str:
    """A default as an operator would write it in the environment."""
    if isinstance(value, bool):
        return "`1`" if value else "`0`"
    if isinstance(value, Path):
        inside = value.is_relative_to(PACKAGE_ROOT)
        return f"`{value.relative_to(PACKAGE_ROOT) if inside else value}`"
    if value == "" or value is None:
        return "empty"
    if isinstance(value, tuple):
        if not value:
            return "empty"
        if all(isinstance(part, float) for part in value):
            return "`" + "-".join(f"{part:g}" for part in value) + "`"
        return "`" + ",".join(map(str, value)) + "`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def allowed(declared: FieldInfo) -> str:
    """The range a numeric setting's declaration allows (`ge` and `le`, the only bounds
    declared here), as the README shows it."""
    # Each bound is an annotated_types object (Ge, Le, ...) with the one attribute it names.
    low = next((b.ge for b in declared.metadata if getattr(b, "ge", None) is not None), None)
    high = next((b.le for b in declared.metadata if getattr(b, "le", None) is not None), None)
    if low is not None and high is not None:
        return f"{number(low)} to {number(high)}"
    if low is not None:
        return f"at least {number(low)}"
    return f"at most {number(high)}" if high is not None else ""


def number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def markdown_table() -> str:
    """The README's configuration table, one row per setting, in declaration order."""
    rows = ["| variable | default | range | meaning |", "| --- | --- | --- | --- |"]
    for name, declared in Settings.model_fields.items():
        default = shown(declared.default)
        rows.append(
            f"| `{ENV_PREFIX}{name.upper()}` | {default} | {allowed(declared)} "
            f"| {declared.description} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
