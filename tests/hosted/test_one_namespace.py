"""Hosted repositories beside the cached ones wherever the mirror lists what it holds:
`mirror ls` (the real command, on the data dir a server serves), marked as hosted."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from testkit.fakeupstream import FakeRegistry, Manifest
from tests.clients import pull_like_docker
from tests.conftest import Client, StartMirror
from tests.hosted.pushing import HOSTED, image, push
from tests.runcli import run_cli


@pytest.fixture
async def mirror(upstream: FakeRegistry, start_mirror: StartMirror) -> Client:
    return await start_mirror(upstream.url, hosted=HOSTED)


async def ls(workdir: Path, *args: str) -> str:
    config = str(workdir / "mirror.toml")
    done = await asyncio.to_thread(run_cli, "ls", *args, "--config", config, cwd=workdir)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_ls_lists_hosted_repositories_beside_cached_ones_marked_hosted(
    mirror: Client, alpine: Manifest, tmp_path: Path
) -> None:
    await pull_like_docker(mirror, "library/alpine", "3.19")
    pushed = image("app")
    await push(mirror, "local/app", pushed, "1.0")
    await push(mirror, "registry.local/team/app", image("team"), "2")

    table = (await ls(tmp_path)).splitlines()
    assert [line.split()[0] for line in table[1:]] == [
        "docker.io/library/alpine",
        "local/app",
        "registry.local/team/app",
    ]
    assert not table[1].endswith("hosted")
    assert table[2].endswith("hosted") and table[3].endswith("hosted")

    (row,) = json.loads(await ls(tmp_path, "local/app", "--json"))
    assert (row["repository"], row["tag"], row["digest"]) == ("local/app", "1.0", pushed.digest)
    assert row["hosted"] is True and row["complete"] is True
    assert row["size"] == len(pushed.data) + sum(len(b.data) for b in pushed.blobs)
    assert (await ls(tmp_path, "local/app")).splitlines()[1].split()[-1] == "hosted"
