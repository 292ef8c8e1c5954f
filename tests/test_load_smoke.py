"""The load test in short: `python -m bench.soak` (the documented command) with 100 clients
for 3 s against a real `mirror serve`, warm and cold manifests and blobs mixed, must end
with zero errors, every blob fetched from the upstream once, and bounded memory. The long
run (500 clients, 60 s) is `python -m bench.soak`; see bench/README.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.soak import MIX
from testkit.mirrorproc import REPO_ROOT, mirror_env

SOAK_TIMEOUT = 120.0


@pytest.mark.slow
def test_a_short_soak_ends_without_errors(tmp_path: Path) -> None:
    figures = tmp_path / "soak.json"
    command = [sys.executable, "-m", "bench.soak", "--clients", "100", "--duration", "3"]
    command += ["--cold-images", "2000", "--max-rss-mb", "256", "--json", str(figures)]
    done = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=mirror_env(),
        capture_output=True,
        text=True,
        timeout=SOAK_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "result: PASS" in done.stdout
    result = json.loads(figures.read_text())
    assert (result["errors"], result["failures"]) == (0, [])
    warm = {kind for kind, _ in MIX} - {"cold-image"}
    assert set(result["kinds"]) == warm | {"cold-manifest", "cold-blob"}
    assert result["cold_images_pulled"] > 0
    assert result["requests"] > 100
