"""Sizes and times as people read them, in command output and log lines alike."""

from __future__ import annotations

import time


def human_size(size: float) -> str:
    """Binary units, one decimal: `3.2 MiB`."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def when(timestamp: float | None) -> str:
    """A unix time as UTC, or `-` when there is none."""
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp))
