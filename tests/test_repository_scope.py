"""Repository-scoped content: what the mirror cached for one repository is served to another
only when the upstream says that repository holds it too (one HEAD, then a link), never
because a client knows a digest; offline, only linked content; links survive a restart on
either metadata backend; the catalog names only repositories with links, a page at a time."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from mirror.cache import scope
from testkit.fakeupstream import FakeRegistry, Fault, Manifest, make_image, make_layer, random_layer
from tests.clients import pull_like_docker
from tests.conftest import Client, StartMirror, answered

BASE = make_layer({"etc/os-release": b"a base layer two teams share\n"})
APP = make_image(layers=[BASE, make_layer({"app": b"team/app's own code\n"})])
OTHER = make_image(layers=[BASE, make_layer({"other": b"team/other's own code\n"})])
APP_LAYER = APP.layers[1]


@pytest.fixture
def repos(upstream: FakeRegistry, alpine: Manifest) -> None:
    """team/app:v1 and team/other:v1 share a base layer; library/alpine holds neither."""
    upstream.push_image("team/app", "v1", APP)
    upstream.push_image("team/other", "v1", OTHER)


async def error_code(mirror: Client, method: str, path: str) -> tuple[int, str | None]:
    async with mirror.request(method, path) as resp:
        if method == "HEAD":
            return resp.status, None
        body = await resp.json()
        return resp.status, body["errors"][0]["code"]


def heads(upstream: FakeRegistry, path: str) -> int:
    return answered(upstream, method="HEAD", path=path)


@pytest.mark.usefixtures("repos")
async def test_another_repositorys_content_is_not_served_after_one_upstream_head_each(
    mirror: Client, upstream: FakeRegistry
) -> None:
    await pull_like_docker(mirror, "team/app", "v1")
    upstream.reset_counts()

    alpine_blob = f"/v2/library/alpine/blobs/{APP_LAYER.digest}"
    alpine_manifest = f"/v2/library/alpine/manifests/{APP.digest}"
    nobody_blob = f"/v2/nobody/nothing/blobs/{APP_LAYER.digest}"
    assert await error_code(mirror, "GET", alpine_blob) == (404, "BLOB_UNKNOWN")
    assert await error_code(mirror, "HEAD", alpine_blob) == (404, None)
    assert await error_code(mirror, "GET", alpine_manifest) == (404, "MANIFEST_UNKNOWN")
    assert await error_code(mirror, "HEAD", alpine_manifest) == (404, None)
    assert await error_code(mirror, "HEAD", nobody_blob) == (404, None)
    assert await error_code(mirror, "GET", nobody_blob) == (404, "BLOB_UNKNOWN")

    # One HEAD per (repository, digest), its answer remembered for the second request.
    assert heads(upstream, alpine_blob) == 1
    assert heads(upstream, alpine_manifest) == 1
    assert heads(upstream, nobody_blob) == 1
    assert answered(upstream, server="registry", method="GET") == 0
    assert answered(upstream, server="cdn") == 0


@pytest.mark.usefixtures("repos")
async def test_the_repository_the_content_came_from_is_served_with_no_upstream_request(
    mirror: Client, upstream: FakeRegistry
) -> None:
    await pull_like_docker(mirror, "team/app", "v1")
    upstream.reset_counts()

    for blob in APP.blobs:
        async with mirror.get(f"/v2/team/app/blobs/{blob.digest}") as resp:
            assert (resp.status, await resp.read()) == (200, blob.data)
        async with mirror.head(f"/v2/team/app/blobs/{blob.digest}") as resp:
            assert (resp.status, resp.content_length) == (200, blob.size)
    async with mirror.get(f"/v2/team/app/manifests/{APP.digest}") as resp:
        assert (resp.status, await resp.read()) == (200, APP.data)
    assert upstream.requests == []


@pytest.mark.usefixtures("repos")
async def test_a_repository_the_upstream_confirms_gets_the_cached_bytes_after_one_head(
    mirror: Client, upstream: FakeRegistry
) -> None:
    await pull_like_docker(mirror, "team/app", "v1")
    upstream.reset_counts()

    path = f"/v2/team/other/blobs/{BASE.digest}"
    for _ in range(2):
        async with mirror.get(path) as resp:
            assert (resp.status, await resp.read()) == (200, BASE.data)
    async with mirror.head(path) as resp:
        assert resp.status == 200
    assert heads(upstream, path) == 1
    assert answered(upstream, server="registry", method="GET") == 0
    assert answered(upstream, server="cdn") == 0

    # Confirmed for team/other, not for its neighbour.
    assert await error_code(mirror, "GET", f"/v2/team/other/blobs/{APP_LAYER.digest}") == (
        404,
        "BLOB_UNKNOWN",
    )


@pytest.mark.usefixtures("repos")
async def test_with_the_upstream_failing_only_linked_content_is_served(
    mirror: Client, upstream: FakeRegistry
) -> None:
    await pull_like_docker(mirror, "team/app", "v1")
    upstream.add_fault(Fault("status", status=503, times=None))

    async with mirror.get(f"/v2/team/app/blobs/{APP_LAYER.digest}") as resp:
        assert (resp.status, await resp.read()) == (200, APP_LAYER.data)
    # The mirror cannot tell whether team/other holds it: the upstream's failure, not 200.
    async with mirror.get(f"/v2/team/other/blobs/{BASE.digest}") as resp:
        assert resp.status == 502
        assert (await resp.json())["errors"][0]["message"].startswith("upstream")
    async with mirror.head(f"/v2/team/other/blobs/{BASE.digest}") as resp:
        assert resp.status == 502


async def test_a_download_in_flight_is_joined_only_from_a_repository_that_holds_it(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest
) -> None:
    big = random_layer(2 * 1024 * 1024, seed=14)
    image = make_image(layers=[big])
    upstream.push_image("team/app", "v1", image)
    upstream.push_image("team/mirror", "v1", image)
    assert (await mirror.get("/v2/team/app/manifests/v1")).status == 200
    upstream.add_fault(Fault("slow", server="cdn", chunk_delay=0.05))

    async with mirror.get(f"/v2/team/app/blobs/{big.digest}") as first:
        assert first.status == 200
        stranger = f"/v2/library/alpine/blobs/{big.digest}"
        assert await error_code(mirror, "GET", stranger) == (404, "BLOB_UNKNOWN")
        assert await error_code(mirror, "HEAD", stranger) == (404, None)
        assert heads(upstream, stranger) == 1

        # A repository the upstream confirms joins the same download: no second GET.
        async with mirror.get(f"/v2/team/mirror/blobs/{big.digest}") as second:
            assert second.status == 200
            assert await second.read() == big.data
        assert await first.read() == big.data
    assert answered(upstream, kind="blob", method="GET") == 1
    assert answered(upstream, method="GET", path=f"/v2/library/alpine/blobs/{big.digest}") == 0


async def test_another_processs_download_is_followed_only_for_a_repository_that_holds_it(
    upstream: FakeRegistry, start_mirror: StartMirror, alpine: Manifest
) -> None:
    """Two mirror instances on one data dir, as two workers: the second would follow the
    first's download of the blob (led for team/app) but asks the upstream first."""
    big = random_layer(2 * 1024 * 1024, seed=15)
    image = make_image(layers=[big])
    upstream.push_image("team/app", "v1", image)
    upstream.push_image("team/mirror", "v1", image)
    first, second = await start_mirror(upstream.url), await start_mirror(upstream.url)
    assert (await first.get("/v2/team/app/manifests/v1")).status == 200
    upstream.add_fault(Fault("slow", server="cdn", chunk_delay=0.05))

    async with first.get(f"/v2/team/app/blobs/{big.digest}") as leader:
        assert leader.status == 200
        stranger = f"/v2/library/alpine/blobs/{big.digest}"
        assert await error_code(second, "GET", stranger) == (404, "BLOB_UNKNOWN")
        assert heads(upstream, stranger) == 1
        async with second.get(f"/v2/team/mirror/blobs/{big.digest}") as follower:
            assert (follower.status, await follower.read()) == (200, big.data)
        assert await leader.read() == big.data
    assert answered(upstream, kind="blob", method="GET") == 1


@pytest.mark.usefixtures("repos")
async def test_offline_only_linked_content_is_served(
    start_mirror: StartMirror, upstream: FakeRegistry, meta_settings: dict[str, Any]
) -> None:
    online = await start_mirror(upstream.url, **meta_settings)
    await pull_like_docker(online, "team/app", "v1")
    await online.close()
    upstream.reset_counts()

    offline = await start_mirror(upstream.url, offline=True, **meta_settings)
    async with offline.get(f"/v2/team/app/blobs/{APP_LAYER.digest}") as resp:
        assert (resp.status, await resp.read()) == (200, APP_LAYER.data)
    for path, code in [
        (f"/v2/team/other/blobs/{BASE.digest}", "BLOB_UNKNOWN"),  # true upstream, unconfirmed
        (f"/v2/library/alpine/blobs/{APP_LAYER.digest}", "BLOB_UNKNOWN"),
        (f"/v2/library/alpine/manifests/{APP.digest}", "MANIFEST_UNKNOWN"),
    ]:
        assert await error_code(offline, "GET", path) == (404, code)
        assert await error_code(offline, "HEAD", path) == (404, None)
    assert upstream.requests == []


@pytest.mark.usefixtures("repos")
async def test_links_survive_a_restart(
    start_mirror: StartMirror, upstream: FakeRegistry, meta_settings: dict[str, Any]
) -> None:
    first = await start_mirror(upstream.url, **meta_settings)
    await pull_like_docker(first, "team/app", "v1")
    assert (await first.get(f"/v2/team/other/blobs/{BASE.digest}")).status == 200
    await first.close()
    upstream.reset_counts()

    again = await start_mirror(upstream.url, **meta_settings)
    for path in [
        f"/v2/team/app/blobs/{APP_LAYER.digest}",
        f"/v2/team/app/manifests/{APP.digest}",
        f"/v2/team/other/blobs/{BASE.digest}",
    ]:
        async with again.get(path) as resp:
            assert resp.status == 200
    assert upstream.requests == []
    assert await error_code(again, "GET", f"/v2/library/alpine/blobs/{APP_LAYER.digest}") == (
        404,
        "BLOB_UNKNOWN",
    )


async def test_a_data_dir_from_before_links_still_serves_its_tagged_images_offline(
    start_mirror: StartMirror, upstream: FakeRegistry, data_dir: Path
) -> None:
    """An upgrade: content and tag records, no links. A tag record is the upstream's answer
    for its repository, so pulling the tag links the image again, even offline."""
    upstream.push_image("team/app", "v1", APP)
    online = await start_mirror(upstream.url)
    await pull_like_docker(online, "team/app", "v1")
    await online.close()
    with sqlite3.connect(data_dir / "meta.sqlite3") as conn:
        conn.execute("DELETE FROM links")
    upstream.reset_counts()

    offline = await start_mirror(upstream.url, offline=True)
    status, _ = await error_code(offline, "GET", f"/v2/team/app/blobs/{APP_LAYER.digest}")
    assert status == 404  # not linked yet
    await pull_like_docker(offline, "team/app", "v1")
    async with offline.get(f"/v2/team/app/blobs/{APP_LAYER.digest}") as resp:
        assert (resp.status, await resp.read()) == (200, APP_LAYER.data)
    assert upstream.requests == []


@pytest.mark.usefixtures("repos")
async def test_upstream_answers_are_remembered_a_bounded_number_at_a_time(
    start_mirror: StartMirror, upstream: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood of names probing a cached blob costs one HEAD each, and the memory of the
    answers stays bounded. (The upstream client's own memory of 404s, `negative_ttl`, is
    turned off here: it would answer the forgotten probe too.)"""
    mirror = await start_mirror(upstream.url, negative_ttl=0)
    await pull_like_docker(mirror, "team/app", "v1")
    monkeypatch.setattr(scope, "PROBE_MEMORY_ENTRIES", 4)
    paths = [f"/v2/flood/n{i}/blobs/{APP_LAYER.digest}" for i in range(6)]
    for path in [*paths, paths[-1]]:
        assert (await mirror.head(path)).status == 404
    assert [heads(upstream, path) for path in paths] == [1] * 6  # the last remembered
    assert (await mirror.head(paths[0])).status == 404
    assert heads(upstream, paths[0]) == 2  # forgotten when the memory filled up


async def catalog(mirror: Client, query: str = "") -> tuple[list[str], str | None]:
    async with mirror.get(f"/v2/_catalog{query}") as resp:
        assert resp.status == 200
        return (await resp.json())["repositories"], resp.headers.get("Link")


@pytest.mark.usefixtures("repos")
async def test_the_catalog_lists_only_repositories_with_confirmed_links(
    mirror: Client, upstream: FakeRegistry
) -> None:
    await pull_like_docker(mirror, "team/app", "v1")
    probes = [f"/v2/library/alpine/blobs/{APP_LAYER.digest}"]
    probes += [f"/v2/flood/n{i}/blobs/{APP_LAYER.digest}" for i in range(20)]
    probes += [f"/v2/flood/m{i}/manifests/{APP.digest}" for i in range(20)]
    for path in probes:
        assert (await mirror.get(path)).status == 404
    assert (await mirror.get(f"/v2/team/other/blobs/{BASE.digest}")).status == 200

    assert await catalog(mirror) == (["team/app", "team/other"], None)
    assert await catalog(mirror, "?ns=docker.io") == (["team/app", "team/other"], None)


async def test_the_catalog_is_paged_with_n_and_last(mirror: Client, upstream: FakeRegistry) -> None:
    names = ["a/one", "b/two", "c/three", "d/four", "e/five"]
    for name in names:
        upstream.push_image(name, "1", make_image(layers=[make_layer({name: name.encode()})]))
        assert (await mirror.get(f"/v2/{name}/manifests/1")).status == 200

    page, link = await catalog(mirror, "?n=2")
    assert (page, link) == (names[:2], '</v2/_catalog?n=2&last=b%2Ftwo>; rel="next"')
    page, link = await catalog(mirror, "?n=2&last=b/two")
    assert (page, link) == (names[2:4], '</v2/_catalog?n=2&last=d%2Ffour>; rel="next"')
    assert await catalog(mirror, "?n=2&last=d/four") == (names[4:], None)
    assert await catalog(mirror, "?last=c/three") == (names[3:], None)
    assert await catalog(mirror, "?n=0") == ([], None)
