"""Hosted repositories beside the cached ones wherever the mirror lists, counts or carries
what it holds: the catalog, `mirror ls` and `mirror export`/`import` (the real commands, on
the data dir a server serves), the metrics, marked as hosted."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from testkit.fakeupstream import FakeRegistry, Manifest
from tests.client_auth.helpers import basic, write_htpasswd
from tests.clients import pull_like_docker
from tests.conftest import Client, StartMirror, toml_value
from tests.hosted.pushing import HOSTED, PASSWORD, PUSHER, Pushable, image, index, push
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


async def mirror_cli(workdir: Path, *args: str) -> str:
    """A `mirror` command that must succeed, run in a thread (the fake upstream answers)."""
    done = await asyncio.to_thread(run_cli, *args, cwd=workdir)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def served(mirror: Client, repo: str, tag: str, pushed: Pushable) -> None:
    """`repo:tag` is `pushed`, every blob and child manifest of it too."""
    resp = await mirror.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": pushed.media_type})
    assert resp.status == 200, await resp.text()
    assert await resp.read() == pushed.data
    for blob in pushed.blobs:
        resp = await mirror.get(f"/v2/{repo}/blobs/{blob.digest}")
        assert (resp.status, await resp.read()) == (200, blob.data)


async def test_hosted_images_travel_in_a_bundle_into_the_hosted_repositories_of_another_mirror(
    mirror: Client, upstream: FakeRegistry, start_mirror: StartMirror, tmp_path: Path
) -> None:
    app = image("app")
    await push(mirror, "local/app", app, "1.0")
    children = [image("amd64"), image("arm64")]
    for child in children:
        await push(mirror, "registry.local/team/app", child, child.digest)
    multi = index(children)
    await push(mirror, "registry.local/team/app", multi, "2")
    bundle = tmp_path / "hosted.tar"
    config = str(tmp_path / "mirror.toml")
    wrote = await mirror_cli(
        tmp_path,
        "export",
        "local/app:1.0",
        "registry.local/team/app:2",
        "-o",
        str(bundle),
        "--config",
        config,
    )
    assert wrote.startswith(f"wrote {bundle}: 2 images, 13 objects (4 manifests, 9 blobs)")

    target = tmp_path / "other"
    hosting = tmp_path / "other.toml"
    hosting.write_text(f"data_dir = {toml_value(str(target))}\nhosted = {toml_value(HOSTED)}\n")
    imported = await mirror_cli(tmp_path, "import", str(bundle), "--config", str(hosting))
    assert "2 images, 13 objects" in imported and "2 hosted tags set" in imported
    again = await mirror_cli(tmp_path, "import", str(bundle), "--config", str(hosting))
    assert "nothing new" in again and "hosted tag" not in again

    other = await start_mirror(upstream.url, hosted=HOSTED, data_dir=str(target))
    await served(other, "local/app", "1.0", app)
    await served(other, "registry.local/team/app", "2", multi)
    for child in children:
        await served(other, "registry.local/team/app", child.digest, child)
    tags = await (await other.get("/v2/registry.local/team/app/tags/list")).json()
    assert tags["tags"] == ["2"]
    assert await catalog(other) == (["local/app", "registry.local/team/app"], "")
    assert upstream.requests == [], "hosted: never fetched"


async def test_hosted_images_import_as_cached_content_where_their_repository_is_not_hosted(
    mirror: Client, start_mirror: StartMirror, tmp_path: Path
) -> None:
    app = image("app")
    await push(mirror, "local/app", app, "1.0")
    bundle = tmp_path / "hosted.tar"
    config = str(tmp_path / "mirror.toml")
    await mirror_cli(tmp_path, "export", "local/app:1.0", "-o", str(bundle), "--config", config)

    elsewhere, target = tmp_path / "elsewhere", tmp_path / "cache-only"
    elsewhere.mkdir()  # no mirror.toml: nothing hosted
    imported = await mirror_cli(elsewhere, "import", str(bundle), "--data-dir", str(target))
    assert "1 image" in imported and "hosted tag" not in imported
    assert "3 tag records new" in imported  # the tag, for each common client's Accept

    offline = await start_mirror("http://127.0.0.1:9", offline=True, data_dir=str(target))
    await served(offline, "local/app", "1.0", app)
    assert (await catalog(offline))[0] == ["local/app"]
