"""The `workers` setting: how many processes serve, a number or `auto` (one per CPU this
process may use, `mirror.cpus`). The config keeps what was set, so `check-config` shows
`auto`; `worker_count` says what it comes to on this machine, in this container."""

from __future__ import annotations

from typing import Any, Final, Literal

from mirror.cpus import usable_cpus

MAX_WORKERS = 64
AUTO: Final = "auto"

Workers = int | Literal["auto"]


def parse_workers(value: Any) -> Workers:
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise ValueError(f'expected "auto" or 1 to {MAX_WORKERS} worker processes, got {value!r}')
    return int(text)


def worker_count(workers: Workers) -> int:
    """The processes `workers` means here: `auto` is one per CPU this process may use (its
    affinity, its cgroup's CPU quota), at most MAX_WORKERS."""
    if workers == AUTO:
        return min(usable_cpus(), MAX_WORKERS)
    return workers


def explain_workers(workers: Workers) -> str | None:
    """What `auto` comes to, for `check-config`."""
    if workers != AUTO:
        return None
    count = worker_count(workers)
    return f"{count} here, one per CPU this process may use"
