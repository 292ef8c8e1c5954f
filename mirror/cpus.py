"""How many CPUs this process may use: those the scheduler lets it run on (its affinity,
as `taskset` or a cpuset sets it), fewer when a cgroup's CPU quota (a container's CPU
limit, systemd's `CPUQuota=`) grants less time than that. `workers = "auto"` runs one
worker per CPU counted here, as nginx's `worker_processes auto` counts affinity and Go's
automaxprocs counts the quota.

A quota is read for the process's cgroup and each of its ancestors (the lowest one binds),
cgroup v2 (`cpu.max`) or v1 (`cpu.cfs_quota_us` over `cpu.cfs_period_us`), under the usual
mount point; a quota of 1.5 CPUs counts as 2.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Collection
from pathlib import Path

PROC_CGROUP = Path("/proc/self/cgroup")  # which cgroup this process is in
CGROUP_FS = Path("/sys/fs/cgroup")  # where the cgroup hierarchies are mounted


def usable_cpus(
    *,
    affinity: Callable[[], Collection[int]] | None = None,
    proc_cgroup: Path = PROC_CGROUP,
    cgroup_fs: Path = CGROUP_FS,
) -> int:
    """The CPUs this process may use, at least 1. `affinity` (the CPUs it may run on)
    and the paths are the system's unless a test passes its own."""
    cpus = len((affinity or _affinity)()) or 1
    quota = cgroup_quota(proc_cgroup, cgroup_fs)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def cgroup_quota(proc_cgroup: Path = PROC_CGROUP, cgroup_fs: Path = CGROUP_FS) -> float | None:
    """The CPU time this process's cgroups grant, in CPUs (the lowest quota of its cgroup
    and their ancestors, v2 and v1 alike); None without a quota or cgroups."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if not controllers:  # "0::/path": the v2 unified hierarchy
            quotas += _quotas(cgroup_fs, path, _v2_quota)
        elif "cpu" in controllers.split(","):  # "4:cpu,cpuacct:/path": v1
            mount = cgroup_fs / controllers
            quotas += _quotas(mount if mount.is_dir() else cgroup_fs / "cpu", path, _v1_quota)
    return min(quotas, default=None)


def _quotas(mount: Path, path: str, read: Callable[[Path], float | None]) -> list[float]:
    """The quotas set on the cgroup at `path` under `mount` and on its ancestors. A
    container with its own cgroup namespace sees its cgroup as the mount itself, and may
    be told a path outside it: then the mount's quota is the one."""
    relative = Path(path.lstrip("/"))
    directory = mount / relative
    if ".." in relative.parts or not directory.is_dir():
        directory = mount
    found = []
    while True:
        quota = read(directory)
        if quota is not None:
            found.append(quota)
        if directory == mount:
            return found
        directory = directory.parent


def _v2_quota(directory: Path) -> float | None:
    """`cpu.max`: "max PERIOD" (no quota) or "QUOTA PERIOD", in microseconds."""
    fields = _read(directory / "cpu.max").split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1])


def _v1_quota(directory: Path) -> float | None:
    """`cpu.cfs_quota_us` (-1: no quota) over `cpu.cfs_period_us`."""
    quota = _read(directory / "cpu.cfs_quota_us").strip()
    if not quota or quota.startswith("-"):
        return None
    return _ratio(quota, _read(directory / "cpu.cfs_period_us").strip())


def _ratio(quota: str, period: str) -> float | None:
    try:
        value = int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _affinity() -> Collection[int]:
    if hasattr(os, "sched_getaffinity"):
        return os.sched_getaffinity(0)
    return range(os.cpu_count() or 1)
