"""Facts about the machine and the software under test, for the JSON record."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def _run(*argv: str) -> str:
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=10, check=False, cwd=REPO_ROOT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable: {exc}"
    return (proc.stdout or proc.stderr).strip()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _meminfo_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def facts() -> dict[str, Any]:
    status = subprocess.run(
        ["git", "status", "--porcelain"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
        cwd=REPO_ROOT,
    ).stdout
    dirty = [line[3:] for line in status.splitlines() if line]
    return {
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_bytes": _meminfo_bytes(),
        "kernel": platform.release(),
        "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3],
        "os": _run("sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"),
        "python": platform.python_version(),
        "aiohttp": _version("aiohttp"),
        "uvloop": _version("uvloop"),
        "distribution": _run("docker-registry", "--version"),
        "nginx": _run("nginx", "-v"),  # on stderr, which _run falls back to
        "wrk": _run("wrk", "-v").splitlines()[0] if _run("wrk", "-v") else None,
        "curl": _run("curl", "--version").splitlines()[0],
        "skopeo": _run("skopeo", "--version"),
        "git_commit": _run("git", "rev-parse", "HEAD"),
        "git_dirty_files": dirty,
        # the code under test differs from the commit
        "mirror_dirty": any(path.startswith("mirror/") for path in dirty),
    }
