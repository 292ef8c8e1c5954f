"""Tag freshness, stale-if-error and offline serving, against both metadata backends.

Every test runs twice: with the embedded SQLite store and with a real Redis server.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from mirror.meta.redis import RedisMetaStore
from mirror.meta.sqlite import SqliteMetaStore
from mirror.meta.store import MetaStore
from testkit.clock import FakeClock
from testkit.fakeupstream import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    FakeRegistry,
    Fault,
    Manifest,
    make_image,
)
from testkit.waiting import wait_until
from tests.conftest import Client, StartMirror, answered
from tests.meta_fixtures import RedisServer

TAG = "/v2/library/alpine/manifests/3.19"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def mirror(
    upstream: FakeRegistry,
    start_mirror: StartMirror,
    meta_settings: dict[str, Any],
    clock: FakeClock,
) -> Client:
    return await start_mirror(
        upstream.url, clock=clock, tag_ttl=60, request_timeout=0.5, **meta_settings
    )


async def get_tag(mirror: Client, path: str = TAG) -> tuple[int, bytes, dict[str, str]]:
    async with mirror.get(path) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


async def test_within_freshness_a_tag_costs_no_upstream_request(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest, clock: FakeClock
) -> None:
    status, body, _ = await get_tag(mirror)
    assert (status, body) == (200, alpine.data)
    upstream.reset_counts()
    clock.advance(59)
    for _ in range(5):
        status, body, headers = await get_tag(mirror)
        assert (status, body) == (200, alpine.data)
        assert "Warning" not in headers
    head = await mirror.head(TAG)
    assert head.headers["Docker-Content-Digest"] == alpine.digest
    assert upstream.requests == []


async def test_after_freshness_an_unchanged_tag_costs_one_head_and_no_get(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest, clock: FakeClock
) -> None:
    await get_tag(mirror)
    upstream.reset_counts()
    clock.advance(61)
    status, body, headers = await get_tag(mirror)
    assert (status, body) == (200, alpine.data)
    assert "Warning" not in headers
    assert answered(upstream, kind="manifest", method="HEAD") == 1
    assert answered(upstream, kind="manifest", method="GET") == 0
    # The HEAD refreshed the record: fresh again for another full period.
    upstream.reset_counts()
    clock.advance(59)
    await get_tag(mirror)
    assert upstream.requests == []


async def test_a_moved_tag_is_served_new_after_its_freshness(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest, clock: FakeClock
) -> None:
    await get_tag(mirror)
    moved = make_image(seed=42)
    upstream.push_image("library/alpine", "3.19", moved)
    clock.advance(30)
    assert (await get_tag(mirror))[1] == alpine.data  # still fresh: the old answer
    upstream.reset_counts()
    clock.advance(31)
    status, body, headers = await get_tag(mirror)
    assert (status, body) == (200, moved.data)
    assert headers["Docker-Content-Digest"] == moved.digest
    assert answered(upstream, kind="manifest", method="HEAD") == 1
    assert answered(upstream, kind="manifest", method="GET") == 1


async def test_fifty_concurrent_requests_for_a_stale_tag_cause_one_revalidation(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest, clock: FakeClock
) -> None:
    await get_tag(mirror)
    upstream.reset_counts()
    clock.advance(61)
    upstream.add_fault(Fault("slow", method="HEAD", delay=0.2, path_contains="/manifests/"))
    results = await asyncio.gather(*(get_tag(mirror) for _ in range(50)))
    assert all(status == 200 and body == alpine.data for status, body, _ in results)
    assert upstream.count(kind="manifest", method="HEAD") == 1
    assert upstream.count(kind="manifest", method="GET") == 0


@pytest.mark.parametrize(
    "fault",
    [
        Fault("status", status=500, times=None, path_contains="/manifests/"),
        Fault("status", status=429, times=None, headers={"Retry-After": "60"}),
        Fault("slow", delay=3.0, times=None, path_contains="/manifests/"),
        Fault("drop", times=None, path_contains="/manifests/"),
    ],
    ids=["500", "429", "timeout", "dropped"],
)
async def test_upstream_failures_serve_a_cached_tag_stale_and_fail_an_uncached_one(
    mirror: Client,
    upstream: FakeRegistry,
    alpine: Manifest,
    clock: FakeClock,
    fault: Fault,
) -> None:
    await get_tag(mirror)
    upstream.push_image("library/never", "1", make_image(seed=5))
    clock.advance(61)
    upstream.add_fault(fault)

    status, body, headers = await get_tag(mirror)
    assert (status, body) == (200, alpine.data)
    assert headers["Warning"].startswith('110 - "Response is Stale')
    head = await mirror.head(TAG)
    assert head.status == 200
    assert "Warning" in head.headers

    uncached = await mirror.get("/v2/library/never/manifests/1")
    assert uncached.status in (429, 502, 503, 504)
    assert (await uncached.json())["errors"][0]["code"] in ("UNAVAILABLE", "TOOMANYREQUESTS")

    # Once the upstream is back, the tag is revalidated and fresh again.
    upstream.clear_faults()
    status, _, headers = await get_tag(mirror)
    assert status == 200
    assert "Warning" not in headers


async def test_an_unreachable_upstream_serves_cached_tags_stale(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    alpine: Manifest,
    meta_settings: dict[str, Any],
    clock: FakeClock,
) -> None:
    mirror = await start_mirror(upstream.url, clock=clock, tag_ttl=60, **meta_settings)
    await get_tag(mirror)
    layer = alpine.layers[0]
    await (await mirror.get(f"/v2/library/alpine/blobs/{layer.digest}")).read()
    await upstream.close()
    clock.advance(61)
    status, body, headers = await get_tag(mirror)
    assert (status, body) == (200, alpine.data)
    assert "unreachable" in headers["Warning"]
    blob = await mirror.get(f"/v2/library/alpine/blobs/{layer.digest}")
    assert await blob.read() == layer.data
    missing = await mirror.get(f"/v2/library/alpine/blobs/{alpine.layers[1].digest}")
    assert missing.status == 503


async def test_offline_mode_serves_the_cache_and_never_contacts_the_upstream(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    alpine: Manifest,
    meta_settings: dict[str, Any],
    clock: FakeClock,
) -> None:
    online = await start_mirror(upstream.url, clock=clock, **meta_settings)
    await get_tag(online)
    for blob in alpine.blobs:
        await (await online.get(f"/v2/library/alpine/blobs/{blob.digest}")).read()
    await online.close()

    # The same upstream stays up and counts: offline, the mirror must not send it anything.
    upstream.reset_counts()
    clock.advance(10 * 24 * 3600)
    offline = await start_mirror(upstream.url, clock=clock, offline=True, **meta_settings)
    status, body, _ = await get_tag(offline)
    assert (status, body) == (200, alpine.data)
    for blob in alpine.blobs:
        resp = await offline.get(f"/v2/library/alpine/blobs/{blob.digest}")
        assert await resp.read() == blob.data
    for path, code in [
        ("/v2/library/alpine/manifests/edge", "MANIFEST_UNKNOWN"),
        ("/v2/library/alpine/manifests/sha256:" + "1" * 64, "MANIFEST_UNKNOWN"),
        ("/v2/library/alpine/blobs/sha256:" + "1" * 64, "BLOB_UNKNOWN"),
    ]:
        resp = await offline.get(path)
        assert resp.status == 404
        error = (await resp.json())["errors"][0]
        assert error["code"] == code
        assert "offline" in error["message"]
    assert upstream.requests == []


async def test_offline_a_tag_cached_for_other_clients_serves_any_client_accepting_it(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    alpine: Manifest,
    meta_settings: dict[str, Any],
    clock: FakeClock,
) -> None:
    """Filled online by one kind of client, served offline to another: the tag record of
    another Accept class names a manifest this client takes too."""
    online = await start_mirror(upstream.url, clock=clock, **meta_settings)
    only_schema2 = {"Accept": DOCKER_MANIFEST}
    assert (await online.get(TAG, headers=only_schema2)).status == 200
    await online.close()
    upstream.reset_counts()

    offline = await start_mirror(upstream.url, clock=clock, offline=True, **meta_settings)
    wide = {"Accept": f"{OCI_INDEX}, {OCI_MANIFEST}, {DOCKER_MANIFEST}"}
    status, body, headers = await _get(offline, TAG, wide)
    assert (status, body) == (200, alpine.data)
    assert "offline" in headers["Warning"]
    oci_only = await offline.get(TAG, headers={"Accept": f"{OCI_INDEX}, {OCI_MANIFEST}"})
    assert oci_only.status == 404  # what is cached is not a type this client takes
    assert upstream.requests == []


async def _get(mirror: Client, path: str, headers: dict[str, str]) -> tuple[int, bytes, Any]:
    async with mirror.get(path, headers=headers) as resp:
        return resp.status, await resp.read(), resp.headers


async def test_rate_limit_floor_defers_revalidation(
    start_mirror: StartMirror, alpine: Manifest, meta_settings: dict[str, Any], clock: FakeClock
) -> None:
    async with FakeRegistry(ratelimit=(100, 12)) as hub:
        hub.push_image("library/alpine", "3.19", alpine)
        hub.push_image("library/fresh", "1", make_image(seed=3))
        mirror = await start_mirror(
            hub.url, clock=clock, tag_ttl=60, ratelimit_floor=10, **meta_settings
        )
        await get_tag(mirror)  # HEAD + GET: remaining 12 -> 11
        await get_tag(mirror, "/v2/library/fresh/manifests/1")  # -> 10: at the floor
        hub.reset_counts()
        clock.advance(61)
        status, body, headers = await get_tag(mirror)
        assert (status, body) == (200, alpine.data)
        assert "rate limit" in headers["Warning"]
        assert hub.requests == []
        # An image nobody has yet still gets the remaining budget.
        hub.push_image("library/new", "1", make_image(seed=4))
        assert (await get_tag(mirror, "/v2/library/new/manifests/1"))[0] == 200


async def test_tag_lists_are_cached_briefly_and_served_stale_on_errors(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    alpine: Manifest,
    meta_settings: dict[str, Any],
    clock: FakeClock,
) -> None:
    mirror = await start_mirror(upstream.url, clock=clock, tags_list_ttl=30, **meta_settings)
    first = await mirror.get("/v2/library/alpine/tags/list")
    assert (await first.json())["tags"] == ["3.19"]
    upstream.reset_counts()
    again = await mirror.get("/v2/library/alpine/tags/list")
    assert (await again.json())["tags"] == ["3.19"]
    assert upstream.requests == []

    clock.advance(31)
    upstream.add_fault(Fault("status", status=503, times=None, path_contains="/tags/"))
    stale = await mirror.get("/v2/library/alpine/tags/list")
    assert stale.status == 200
    assert (await stale.json())["tags"] == ["3.19"]
    assert stale.headers["Warning"].startswith('110 - "Response is Stale')


async def test_catalog_lists_the_repositories_the_mirror_holds(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest
) -> None:
    upstream.push_image("team/app", "1", make_image(seed=8))
    assert (await (await mirror.get("/v2/_catalog")).json()) == {"repositories": []}
    await get_tag(mirror)
    await get_tag(mirror, "/v2/team/app/manifests/1")
    catalog = await mirror.get("/v2/_catalog")
    assert await catalog.json() == {"repositories": ["library/alpine", "team/app"]}
    page = await mirror.get("/v2/_catalog?n=1")
    assert await page.json() == {"repositories": ["library/alpine"]}
    assert page.headers["Link"] == '</v2/_catalog?n=1&last=library%2Falpine>; rel="next"'
    rest = await mirror.get("/v2/_catalog?n=1&last=library/alpine")
    assert await rest.json() == {"repositories": ["team/app"]}


async def open_backend(settings: dict[str, Any], data_dir: Path) -> MetaStore:
    if "redis_url" in settings:
        return await RedisMetaStore.open(settings["redis_url"], settings["redis_key_prefix"])
    return await SqliteMetaStore.open(data_dir / "meta.sqlite3")


async def test_access_records_are_written_in_batches(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    alpine: Manifest,
    meta_settings: dict[str, Any],
    data_dir: Path,
) -> None:
    mirror = await start_mirror(upstream.url, **meta_settings)
    await get_tag(mirror)
    layer = alpine.layers[0]
    await (await mirror.get(f"/v2/library/alpine/blobs/{layer.digest}")).read()
    await (await mirror.get(f"/v2/alpine/blobs/{layer.digest}")).read()
    await mirror.close()  # shutdown flushes what has collected

    store = await open_backend(meta_settings, data_dir)
    try:
        manifest_access = await store.get_access(alpine.digest)
        blob_access = await store.get_access(layer.digest)
    finally:
        await store.close()
    assert manifest_access is not None and manifest_access.repos == {"docker.io/library/alpine"}
    assert blob_access is not None and blob_access.repos == {"docker.io/library/alpine"}
    assert blob_access.last_access >= manifest_access.last_access


async def test_tags_survive_a_restart_with_the_embedded_store(
    start_mirror: StartMirror, upstream: FakeRegistry, alpine: Manifest, clock: FakeClock
) -> None:
    first = await start_mirror(upstream.url, clock=clock, tag_ttl=60)
    await get_tag(first)
    await first.close()
    upstream.reset_counts()
    second = await start_mirror(upstream.url, clock=clock, tag_ttl=60)
    status, body, _ = await get_tag(second)
    assert (status, body) == (200, alpine.data)
    assert upstream.requests == []


async def test_losing_redis_keeps_requests_working_and_it_recovers(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    alpine: Manifest,
    redis_server: RedisServer,
    clock: FakeClock,
) -> None:
    # No in-memory copies of records: every request must go to the (lost) store.
    settings = {"redis_url": redis_server.url, "tag_ttl": 60, "tag_cache_seconds": 0}
    mirror = await start_mirror(upstream.url, clock=clock, **settings)
    await get_tag(mirror)

    await redis_server.stop()
    upstream.reset_counts()
    for _ in range(3):
        status, body, _ = await get_tag(mirror)
        assert (status, body) == (200, alpine.data)
    # Without its records the mirror asks the upstream, as if the tag were stale.
    assert answered(upstream, kind="manifest", method="HEAD") == 3

    # Once Redis is back (after the store's short back-off), a revalidation writes the
    # record again and the next request is answered from it without the upstream.
    await redis_server.start()

    async def answered_from_the_record() -> bool:
        assert (await get_tag(mirror))[0] == 200
        upstream.reset_counts()
        assert (await get_tag(mirror))[0] == 200
        return not upstream.requests

    # The back-off is the store's own (monotonic) time: polled, not a clock to advance.
    await wait_until(
        answered_from_the_record,
        within=10,
        message="a tag answered from its record once Redis is back",
        interval=0.1,
    )


async def test_tag_rules_set_freshness_per_pattern_and_immutable_tags_never_revalidate(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    alpine: Manifest,
    meta_settings: dict[str, Any],
    clock: FakeClock,
) -> None:
    rules = [
        {"match": "*:latest", "ttl": 10},
        {"tag_regex": r"v?\d+\.\d+\.\d+", "immutable": True},
        {"match": "library/*", "ttl": 600},
    ]
    mirror = await start_mirror(
        upstream.url, clock=clock, tag_ttl=60, tag_rules=rules, **meta_settings
    )
    for tag in ("latest", "1.2.3", "edge"):
        upstream.tag("library/alpine", tag, alpine)
        await get_tag(mirror, f"/v2/library/alpine/manifests/{tag}")

    def heads(tag: str) -> int:
        return answered(upstream, method="HEAD", path=f"/v2/library/alpine/manifests/{tag}")

    upstream.reset_counts()
    clock.advance(11)  # `latest` is stale, `edge` (library/*: 600 s) is not
    for tag in ("latest", "1.2.3", "edge"):
        await get_tag(mirror, f"/v2/library/alpine/manifests/{tag}")
    assert (heads("latest"), heads("1.2.3"), heads("edge")) == (1, 0, 0)

    upstream.reset_counts()
    clock.advance(365 * 24 * 3600)  # a year on, the release tag is still never asked about
    for tag in ("latest", "1.2.3", "edge"):
        await get_tag(mirror, f"/v2/library/alpine/manifests/{tag}")
    assert (heads("latest"), heads("1.2.3"), heads("edge")) == (1, 0, 1)


async def test_mirrors_sharing_a_metadata_store_revalidate_a_tag_once(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    alpine: Manifest,
    meta_settings: dict[str, Any],
    clock: FakeClock,
) -> None:
    """Two mirror instances (as on two hosts sharing Redis, or one data dir): a stale tag
    asked of both at once costs the upstream one HEAD, via the store's lock."""
    first = await start_mirror(upstream.url, clock=clock, tag_ttl=60, **meta_settings)
    second = await start_mirror(upstream.url, clock=clock, tag_ttl=60, **meta_settings)
    await get_tag(first)
    upstream.reset_counts()
    clock.advance(61)
    upstream.add_fault(Fault("slow", method="HEAD", delay=0.3, path_contains="/manifests/"))
    results = await asyncio.gather(
        *(get_tag(mirror) for mirror in (first, second) for _ in range(10))
    )
    assert all(status == 200 and body == alpine.data for status, body, _ in results)
    assert upstream.count(kind="manifest", method="HEAD") == 1


async def test_rate_limit_headers_are_kept_in_the_metadata_store(
    start_mirror: StartMirror,
    alpine: Manifest,
    meta_settings: dict[str, Any],
    data_dir: Path,
) -> None:
    async with FakeRegistry(ratelimit=(100, 77)) as hub:
        hub.push_image("library/alpine", "3.19", alpine)
        mirror = await start_mirror(hub.url, **meta_settings)
        await get_tag(mirror)
        await mirror.close()
    store = await open_backend(meta_settings, data_dir)
    try:
        ratelimit = await store.get_rate_limit("docker.io")  # keyed by the registry it is
    finally:
        await store.close()
    assert ratelimit is not None
    assert (ratelimit.limit, ratelimit.remaining, ratelimit.window) == (100, 76, 21600)


async def test_hot_tag_records_are_kept_in_memory_briefly(
    upstream: FakeRegistry,
    start_mirror: StartMirror,
    alpine: Manifest,
    redis_server: RedisServer,
    clock: FakeClock,
) -> None:
    """With `tag_cache_seconds`, a hot tag does not even cost a metadata-store round trip:
    it is served while the store is gone, and freshness is still judged by the record."""
    mirror = await start_mirror(
        upstream.url, clock=clock, redis_url=redis_server.url, tag_ttl=60, tag_cache_seconds=30
    )
    await get_tag(mirror)
    await redis_server.stop()
    upstream.reset_counts()
    assert (await get_tag(mirror))[1] == alpine.data
    assert upstream.requests == []
    clock.advance(61)  # stale by the record's own time: revalidated despite being in memory
    assert (await get_tag(mirror))[1] == alpine.data
    assert answered(upstream, kind="manifest", method="HEAD") == 1


async def test_mirrors_sharing_a_metadata_store_fetch_a_manifest_once(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    alpine: Manifest,
    meta_settings: dict[str, Any],
) -> None:
    first = await start_mirror(upstream.url, **meta_settings)
    second = await start_mirror(upstream.url, **meta_settings)
    upstream.add_fault(Fault("slow", method="GET", delay=0.3, path_contains="/manifests/"))
    path = f"/v2/library/alpine/manifests/{alpine.digest}"
    results = await asyncio.gather(
        *(get_tag(mirror, path) for mirror in (first, second) for _ in range(5))
    )
    assert all(status == 200 and body == alpine.data for status, body, _ in results)
    assert answered(upstream, kind="manifest", method="GET") == 1
