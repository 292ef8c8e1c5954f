"""Hosted repositories beside the cached ones wherever the mirror lists or counts what it
holds: the catalog, `mirror ls` (the real command, on the data dir a server serves), the
metrics, marked as hosted."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from testkit.fakeupstream import FakeRegistry, Manifest
from tests.client_auth.helpers import basic, write_htpasswd
from tests.clients import pull_like_docker
from tests.conftest import Client, StartMirror
from tests.hosted.pushing import HOSTED, PASSWORD, PUSHER, image, push
from tests.runcli import run_cli
from tests.scrape import delta, scrape


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


async def catalog(mirror: Client, query: str = "", **headers: str) -> tuple[list[str], str]:
    resp = await mirror.get(f"/v2/_catalog{query}", headers=headers)
    assert resp.status == 200
    return (await resp.json())["repositories"], resp.headers.get("Link", "")


async def test_the_catalog_lists_hosted_repositories_sorted_among_cached_ones(
    mirror: Client, alpine: Manifest
) -> None:
    await pull_like_docker(mirror, "library/alpine", "3.19")
    await push(mirror, "local/app", image("app"), "1.0")
    await push(mirror, "registry.local/team/app", image("team"), "2")

    everything = ["library/alpine", "local/app", "registry.local/team/app"]
    assert await catalog(mirror) == (everything, "")
    # Paged across cached and hosted names alike, each page's Link leading to the next.
    assert await catalog(mirror, "?n=1") == (
        ["library/alpine"],
        '</v2/_catalog?n=1&last=library%2Falpine>; rel="next"',
    )
    assert await catalog(mirror, "?n=1&last=library/alpine") == (
        ["local/app"],
        '</v2/_catalog?n=1&last=local%2Fapp>; rel="next"',
    )
    assert await catalog(mirror, "?n=2&last=local/app") == (["registry.local/team/app"], "")
    # Routed by `ns`, the names that registry's clients address.
    assert (await catalog(mirror, "?ns=docker.io"))[0] == ["library/alpine", "local/app"]


async def test_the_catalog_lists_only_the_hosted_repositories_the_user_may_pull(
    upstream: FakeRegistry, start_mirror: StartMirror, alpine: Manifest, tmp_path: Path
) -> None:
    users = write_htpasswd(tmp_path / "users", {PUSHER: PASSWORD, "viewer": "viewer-password"})
    rules = [
        {"users": [PUSHER], "repositories": ["*"], "access": "push"},
        {"users": ["viewer"], "repositories": ["library/*", "local/shared"]},
    ]
    mirror = await start_mirror(upstream.url, hosted=HOSTED, htpasswd=str(users), auth_rules=rules)
    await pull_like_docker(mirror, "library/alpine", "3.19")
    await push(mirror, "local/app", image("app"), "1.0")
    await push(mirror, "local/shared", image("shared"), "1.0")

    assert (await catalog(mirror))[0] == ["library/alpine", "local/app", "local/shared"]
    viewer = basic("viewer", "viewer-password")
    assert (await catalog(mirror, **viewer))[0] == ["library/alpine", "local/shared"]


async def test_pushes_are_counted_by_kind(mirror: Client) -> None:
    pushed = image("app")
    before = await scrape(mirror)
    await push(mirror, "local/app", pushed, "1.0")
    layer = pushed.blobs[-1].digest
    mounted = await mirror.post(f"/v2/local/copy/blobs/uploads/?mount={layer}&from=local/app")
    assert mounted.status == 201
    after = await scrape(mirror)

    pushes = "mirror_hosted_pushes_total"
    assert delta(after, before, pushes, kind="blob") == len(pushed.blobs)
    assert delta(after, before, pushes, kind="mount") == 1
    assert delta(after, before, pushes, kind="manifest") == 1
