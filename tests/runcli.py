"""The `mirror` command line run as `python -m mirror` in a clean environment, for tests of
what the command prints and how it exits: no MIRROR_* variables (only PATH, what the test
gives, and PYTHONPATH naming this tree, so a worktree runs its own code and not whatever
`mirror` the virtualenv has installed)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path

from testkit.mirrorproc import REPO_ROOT


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path, cpus: Collection[int] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m mirror ARGS` in `cwd` (no mirror.toml unless the test wrote one), pinned
    to `cpus` if given (its affinity, as `taskset` sets it)."""
    return subprocess.run(
        [sys.executable, "-m", "mirror", *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), **(env or {})},
        cwd=cwd,
        timeout=30,
        preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
    )
