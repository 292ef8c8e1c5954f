"""Values written back as TOML, for `check-config` and the rules' own `str()`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def toml_value(value: Any) -> str:
    """`value` as a TOML value (None, an unset optional, as the empty string)."""
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        items = (toml_str(item) if isinstance(item, str) else str(item) for item in value)
        return "[" + ", ".join(items) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{toml_str(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return toml_str(str(value))


def toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
