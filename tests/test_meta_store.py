"""The metadata store: one contract suite per role (health, tag records, locks, rate limits,
access records, catalog, cached responses), each run against every implementation: SQLite,
Redis, and the resilient wrapper over each. Then what only one backend has (a file that
outlives the process, key prefixes on a shared server, how a corrupt record is reported),
the resilient wrapper riding out a Redis that goes away and comes back, and that the store
loads no metrics library."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from mirror import observe
from mirror.meta import open_meta_store
from mirror.meta.redis import RedisMetaStore, masked_url
from mirror.meta.resilient import ResilientMetaStore
from mirror.meta.sqlite import SqliteMetaStore
from mirror.meta.store import (
    Access,
    AccessRecords,
    CachedResponse,
    CachedResponses,
    Catalog,
    Health,
    Locks,
    MetaStore,
    MetaStoreError,
    RateLimit,
    RateLimits,
    TagKey,
    TagRecord,
    TagRecords,
)
from mirror.metrics import PrometheusSink
from mirror.reference import Digest
from testkit.clock import FakeClock
from testkit.mirrorproc import free_port
from testkit.waiting import wait_until
from tests.meta_fixtures import UNTIL_TIMEOUT, RedisServer, forget_prefix, unique_prefix

HUB = "registry-1.docker.io"
LOCAL = "localhost:5000"
OCI = "application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json"
DOCKER = "application/vnd.docker.distribution.manifest.v2+json"
KEY = TagKey(HUB, "library/alpine", "3.19", OCI)
RECORD = TagRecord(
    Digest.parse("sha256:" + "a" * 64), "application/vnd.oci.image.index.v1+json", 1234, 1e9
)
DIGEST = "sha256:" + "b" * 64
# A TTL that runs out soon in real time too: Redis expires keys by its own clock.
SHORT_TTL = 0.05


# --- health ---------------------------------------------------------------------------------


async def test_ping_answers(meta_store: Health) -> None:
    await meta_store.ping()


async def test_a_store_that_answers_is_available_with_no_errors(meta_store: MetaStore) -> None:
    await meta_store.put_tag(KEY, RECORD)
    assert await meta_store.get_tag(KEY) == RECORD
    assert meta_store.available and meta_store.errors == 0


# --- tag records ----------------------------------------------------------------------------


async def test_tag_round_trip_replace_and_delete(meta_store: TagRecords) -> None:
    assert await meta_store.get_tag(KEY) is None
    await meta_store.put_tag(KEY, RECORD)
    assert await meta_store.get_tag(KEY) == RECORD

    newer = replace(RECORD, digest=Digest.parse("sha256:" + "c" * 64), confirmed_at=2e9)
    await meta_store.put_tag(KEY, newer)
    assert await meta_store.get_tag(KEY) == newer

    await meta_store.delete_tag(KEY)
    assert await meta_store.get_tag(KEY) is None
    await meta_store.delete_tag(KEY)  # deleting what is gone is fine


async def test_tags_differing_only_by_accept_class_or_upstream_are_distinct(
    meta_store: TagRecords,
) -> None:
    docker = replace(KEY, accept=DOCKER)
    local = replace(KEY, upstream=LOCAL)
    await meta_store.put_tag(KEY, RECORD)
    await meta_store.put_tag(docker, replace(RECORD, size=1))
    assert await meta_store.get_tag(local) is None
    await meta_store.put_tag(local, replace(RECORD, size=2))

    assert await meta_store.get_tag(KEY) == RECORD
    assert await meta_store.get_tag(docker) == replace(RECORD, size=1)
    assert await meta_store.get_tag(local) == replace(RECORD, size=2)
    await meta_store.delete_tag(docker)
    assert await meta_store.get_tag(KEY) == RECORD


async def test_every_tag_record_can_be_listed(meta_store: TagRecords) -> None:
    other = TagKey("registry.example.com:5000", "team/app", "v1", "application/x:y")
    await meta_store.put_tag(KEY, RECORD)
    await meta_store.put_tag(other, RECORD)
    assert sorted(await meta_store.list_tags(), key=lambda item: item[0].upstream) == [
        (KEY, RECORD),
        (other, RECORD),
    ]
    await meta_store.delete_tag(other)
    assert await meta_store.list_tags() == [(KEY, RECORD)]


async def test_one_tags_records_under_every_accept_class(meta_store: TagRecords) -> None:
    ipv6 = "[::1]:5000"  # glob characters in a Redis key must not match other tags
    other_class = replace(KEY, accept="application/vnd.docker.distribution.manifest.v2+json")
    newer = replace(RECORD, confirmed_at=2e9)
    await meta_store.put_tag(KEY, RECORD)
    await meta_store.put_tag(other_class, newer)
    await meta_store.put_tag(replace(KEY, tag="3.20"), RECORD)
    await meta_store.put_tag(replace(KEY, upstream=ipv6), RECORD)
    await meta_store.put_tag(replace(KEY, upstream="[::2]:5000"), newer)
    found = await meta_store.tag_records(KEY.upstream, KEY.repo, KEY.tag)
    assert sorted(found, key=lambda r: r.confirmed_at) == [RECORD, newer]
    assert await meta_store.tag_records(ipv6, KEY.repo, KEY.tag) == [RECORD]
    assert await meta_store.tag_records(KEY.upstream, KEY.repo, "latest") == []


async def test_tag_records_come_back_with_a_parsed_digest(meta_store: TagRecords) -> None:
    sha512 = replace(RECORD, digest=Digest.parse("sha512:" + "e" * 128))
    await meta_store.put_tag(KEY, sha512)
    record = await meta_store.get_tag(KEY)
    assert record is not None and record.digest == Digest("sha512", "e" * 128)


# --- locks ----------------------------------------------------------------------------------


async def test_a_held_lock_excludes_others_until_unlocked(meta_store: Locks) -> None:
    token = await meta_store.try_lock("revalidate:alpine", ttl=30)
    assert token is not None
    assert await meta_store.try_lock("revalidate:alpine", ttl=30) is None
    other = await meta_store.try_lock("revalidate:busybox", ttl=30)
    assert other is not None and other != token

    await meta_store.unlock("revalidate:alpine", token)
    again = await meta_store.try_lock("revalidate:alpine", ttl=30)
    assert again is not None and again != token


async def test_unlock_with_a_wrong_token_does_nothing(meta_store: Locks) -> None:
    token = await meta_store.try_lock("lock", ttl=30)
    assert token is not None
    await meta_store.unlock("lock", "not-the-token")
    assert await meta_store.try_lock("lock", ttl=30) is None
    await meta_store.unlock("never-taken", "whatever")


async def test_a_lock_expires_after_its_ttl(meta_store: Locks, meta_clock: FakeClock) -> None:
    stale = await meta_store.try_lock("lock", ttl=SHORT_TTL)
    assert stale is not None
    meta_clock.advance(2 * SHORT_TTL)

    async def taken_over() -> bool:
        return await meta_store.try_lock("lock", ttl=30) is not None

    await wait_until(taken_over, within=UNTIL_TIMEOUT, message="the lock was not taken over")
    # The first holder's late unlock must not release the second holder's lock.
    await meta_store.unlock("lock", stale)
    assert await meta_store.try_lock("lock", ttl=30) is None


# --- rate limits ----------------------------------------------------------------------------


async def test_rate_limits_per_upstream(meta_store: RateLimits) -> None:
    assert await meta_store.get_rate_limit(HUB) is None
    first = RateLimit(limit=100, remaining=99, window=21600, observed_at=1e9)
    await meta_store.put_rate_limit(HUB, first)
    assert await meta_store.get_rate_limit(HUB) == first
    assert await meta_store.get_rate_limit(LOCAL) is None

    later = replace(first, remaining=42, observed_at=1e9 + 60)
    await meta_store.put_rate_limit(HUB, later)
    assert await meta_store.get_rate_limit(HUB) == later


# --- access records -------------------------------------------------------------------------


async def test_access_batches_merge_keeping_the_latest_time_and_all_repos(
    meta_store: AccessRecords,
) -> None:
    other = "sha256:" + "d" * 64
    assert await meta_store.get_access(DIGEST) is None
    await meta_store.record_access({DIGEST: Access(100.0, {"library/alpine"}), other: Access(5.0)})
    await meta_store.record_access({DIGEST: Access(300.0, {"team/base", "library/alpine"})})
    await meta_store.record_access({DIGEST: Access(200.0, {"library/nginx"})})  # older: kept
    await meta_store.record_access({})

    assert await meta_store.get_access(DIGEST) == Access(
        300.0, {"library/alpine", "team/base", "library/nginx"}
    )
    assert await meta_store.get_access(other) == Access(5.0, set())


async def test_access_records_can_be_listed_and_forgotten(meta_store: AccessRecords) -> None:
    await meta_store.record_access({"sha256:a": Access(10.0, {"x/y"}), "sha256:b": Access(20.0)})
    assert await meta_store.list_accesses() == {"sha256:a": 10.0, "sha256:b": 20.0}
    await meta_store.delete_accesses(["sha256:a"])
    await meta_store.delete_accesses([])
    assert await meta_store.list_accesses() == {"sha256:b": 20.0}
    assert await meta_store.get_access("sha256:a") is None


async def test_pull_counts_add_up_and_rank_the_most_pulled_first(
    meta_store: AccessRecords,
) -> None:
    assert await meta_store.top_repositories(10) == []
    await meta_store.record_pulls({"docker.io/library/alpine": 3, "ghcr.io/org/app": 1})
    await meta_store.record_pulls({"ghcr.io/org/app": 4, "quay.io/a/b": 1})
    await meta_store.record_pulls({})
    assert await meta_store.top_repositories(10) == [
        ("ghcr.io/org/app", 5),
        ("docker.io/library/alpine", 3),
        ("quay.io/a/b", 1),
    ]
    assert await meta_store.top_repositories(1) == [("ghcr.io/org/app", 5)]


# --- catalog --------------------------------------------------------------------------------


async def test_repositories_are_sorted_deduplicated_and_per_upstream(meta_store: Catalog) -> None:
    assert await meta_store.list_repositories(HUB) == []
    await meta_store.add_repositories(HUB, ["library/nginx", "library/alpine"])
    await meta_store.add_repositories(HUB, (name for name in ["library/alpine", "a/b"]))
    await meta_store.add_repositories(HUB, [])
    await meta_store.add_repositories(LOCAL, ["team/base"])

    assert await meta_store.list_repositories(HUB) == ["a/b", "library/alpine", "library/nginx"]
    assert await meta_store.list_repositories(LOCAL) == ["team/base"]


async def test_repositories_can_be_removed_from_the_catalog(meta_store: Catalog) -> None:
    await meta_store.add_repositories(HUB, ["a/b", "c/d"])
    await meta_store.remove_repositories(HUB, ["a/b", "not/there"])
    await meta_store.remove_repositories(HUB, [])
    assert await meta_store.list_repositories(HUB) == ["c/d"]


# --- cached responses -----------------------------------------------------------------------


async def test_cached_responses_round_trip(meta_store: CachedResponses) -> None:
    key = f"tags:{HUB}/library/alpine?n=100"
    body = b'{"name":"library/alpine","tags":["3.19"]}\n\x00\xff binary \n too'
    response = CachedResponse(body, {"Content-Type": "application/json", "Link": "<x>"}, 1e9)
    assert await meta_store.get_response(key) is None
    await meta_store.put_response(key, response, keep_for=60)
    assert await meta_store.get_response(key) == response

    replaced = CachedResponse(b"", {}, 2e9)
    await meta_store.put_response(key, replaced, keep_for=60)
    assert await meta_store.get_response(key) == replaced


async def test_cached_responses_expire_after_keep_for(
    meta_store: CachedResponses, meta_clock: FakeClock
) -> None:
    await meta_store.put_response("short", CachedResponse(b"a", {}, 1e9), keep_for=SHORT_TTL)
    await meta_store.put_response("long", CachedResponse(b"b", {}, 1e9), keep_for=60)
    meta_clock.advance(2 * SHORT_TTL)

    async def short_gone() -> bool:
        return await meta_store.get_response("short") is None

    await wait_until(short_gone, within=UNTIL_TIMEOUT, message="the response was still kept")
    assert await meta_store.get_response("long") == CachedResponse(b"b", {}, 1e9)


# --- SQLite -------------------------------------------------------------------------------


async def test_sqlite_keeps_records_across_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "meta.sqlite3"
    store = await SqliteMetaStore.open(path)
    await store.put_tag(KEY, RECORD)
    await store.add_repositories(HUB, ["library/alpine"])
    await store.close()

    reopened = await SqliteMetaStore.open(path)
    try:
        assert await reopened.get_tag(KEY) == RECORD
        assert await reopened.list_repositories(HUB) == ["library/alpine"]
    finally:
        await reopened.close()


async def test_sqlite_locks_coordinate_stores_sharing_the_file(tmp_path: Path) -> None:
    """Two connections to one file, as two mirror processes sharing a data dir have."""
    first = await SqliteMetaStore.open(tmp_path / "meta.sqlite3")
    second = await SqliteMetaStore.open(tmp_path / "meta.sqlite3")
    try:
        token = await first.try_lock("lock", ttl=30)
        assert token is not None
        assert await second.try_lock("lock", ttl=30) is None
        await first.put_tag(KEY, RECORD)
        assert await second.get_tag(KEY) == RECORD
        await first.unlock("lock", token)
        assert await second.try_lock("lock", ttl=30) is not None
    finally:
        await first.close()
        await second.close()


async def test_sqlite_failures_are_meta_store_errors(tmp_path: Path) -> None:
    with pytest.raises(MetaStoreError, match="SQLite"):
        await SqliteMetaStore.open(tmp_path)  # a directory, not a database file
    store = await SqliteMetaStore.open(tmp_path / "meta.sqlite3")
    await store.close()
    with pytest.raises(MetaStoreError):
        await store.get_tag(KEY)
    assert (store.errors, store.available) == (1, False)

    with sqlite3.connect(tmp_path / "newer.sqlite3") as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(MetaStoreError, match="schema version 99 is newer"):
        await SqliteMetaStore.open(tmp_path / "newer.sqlite3")


async def test_a_sqlite_tag_record_that_does_not_parse_is_a_counted_error(
    tmp_path: Path,
) -> None:
    """Read as Redis reads one: the store says it is corrupt rather than hand it on."""
    path = tmp_path / "meta.sqlite3"
    store = await SqliteMetaStore.open(path)
    try:
        await store.put_tag(KEY, RECORD)
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE tags SET digest = 'sha256:not-hex'")
        for read in (
            store.get_tag(KEY),
            store.list_tags(),
            store.tag_records(HUB, KEY.repo, "3.19"),
        ):
            with pytest.raises(MetaStoreError, match="corrupt tag record"):
                await read
        assert (store.errors, store.available) == (3, False)
        assert await store.get_tag(replace(KEY, tag="other")) is None
        assert store.available  # the next call that answers
    finally:
        await store.close()


async def test_open_meta_store_defaults_to_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "not" / "yet"
    store = await open_meta_store(redis_url=None, key_prefix="mirror:", data_dir=data_dir)
    try:
        assert isinstance(store, ResilientMetaStore)
        await store.put_tag(KEY, RECORD)
        assert (data_dir / "meta.sqlite3").is_file()
    finally:
        await store.close()


# --- Redis --------------------------------------------------------------------------------


async def test_redis_key_prefixes_isolate_stores_on_one_server(redis_url: str) -> None:
    prefixes = unique_prefix(), unique_prefix()
    one = await RedisMetaStore.open(redis_url, prefixes[0])
    two = await RedisMetaStore.open(redis_url, prefixes[1])
    try:
        await one.put_tag(KEY, RECORD)
        await one.add_repositories(HUB, ["library/alpine"])
        await one.record_access({DIGEST: Access(1.0, {"library/alpine"})})
        assert await one.try_lock("lock", ttl=30) is not None

        assert await two.get_tag(KEY) is None
        assert await two.list_repositories(HUB) == []
        assert await two.get_access(DIGEST) is None
        assert await two.try_lock("lock", ttl=30) is not None
    finally:
        await one.close()
        await two.close()
        for prefix in prefixes:
            await forget_prefix(redis_url, prefix)


async def test_redis_keys_all_start_with_the_prefix(redis_server: RedisServer) -> None:
    store = await RedisMetaStore.open(redis_server.url, "deploy-a:")
    raw = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await store.put_tag(KEY, RECORD)
        assert await store.try_lock("lock", ttl=30) is not None
        await store.put_rate_limit(HUB, RateLimit(100, 99, 21600, 1e9))
        await store.record_access({DIGEST: Access(1.0, {"library/alpine"})})
        await store.add_repositories(HUB, ["library/alpine"])
        await store.put_response("tags", CachedResponse(b"{}", {}, 1e9), keep_for=60)

        keys = sorted(map(str, await raw.keys("*")))
        assert keys == [
            "deploy-a:access",
            f"deploy-a:access-repos:{DIGEST}",
            "deploy-a:lock:lock",
            f"deploy-a:ratelimit:{HUB}",
            f"deploy-a:repos:{HUB}",
            "deploy-a:response:tags",
            f"deploy-a:tag:{HUB}/library/alpine:3.19:{OCI}",
        ]
        assert 0 < await raw.pttl("deploy-a:response:tags") <= 60_000
    finally:
        await raw.aclose()
        await store.close()


async def test_a_redis_tag_record_that_does_not_parse_is_a_counted_error(
    redis_server: RedisServer,
) -> None:
    store = await RedisMetaStore.open(redis_server.url, "deploy-a:")
    raw = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await store.put_tag(KEY, RECORD)
        name = f"deploy-a:tag:{HUB}/library/alpine:3.19:{OCI}"
        value = await raw.get(name)
        assert value is not None
        await raw.set(name, str(value).replace(str(RECORD.digest), "sha256:not-hex"))
        with pytest.raises(MetaStoreError, match="corrupt record"):
            await store.get_tag(KEY)
        assert (store.errors, store.available) == (1, False)
        assert await store.get_tag(replace(KEY, tag="other")) is None
        assert store.available
    finally:
        await raw.aclose()
        await store.close()


async def test_unreachable_redis_is_an_error_naming_the_masked_url() -> None:
    port = free_port()  # nothing listens here
    url = f"redis://:s3cret@127.0.0.1:{port}/0"
    started = time.monotonic()
    with pytest.raises(MetaStoreError) as raised:
        await open_meta_store(redis_url=url, key_prefix="mirror:", data_dir=Path("unused"))
    assert f"redis://:***@127.0.0.1:{port}/0" in str(raised.value)
    assert "s3cret" not in str(raised.value)
    assert time.monotonic() - started < 3


def test_masked_url_hides_every_password() -> None:
    assert masked_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert masked_url("redis://user:pa:ss@host:6379/1") == "redis://user:***@host:6379/1"
    assert masked_url("rediss://:p%40ss@host") == "rediss://:***@host"
    assert masked_url("redis://user@host") == "redis://user@host"
    assert (
        masked_url("unix:///run/redis.sock?db=2&password=secret")
        == "unix:///run/redis.sock?db=2&password=***"
    )


# --- the resilient wrapper ----------------------------------------------------------------


@pytest.fixture
def prometheus_sink() -> Iterator[None]:
    """Counts go to the Prometheus metrics, as in a server, for the test."""
    previous = observe.install(PrometheusSink())
    yield
    observe.install(previous)


def failures(operation: str) -> float:
    value = REGISTRY.get_sample_value("mirror_meta_store_errors_total", {"operation": operation})
    return value or 0.0


async def test_resilient_store_passes_answers_and_locks_through(tmp_path: Path) -> None:
    store = ResilientMetaStore(await SqliteMetaStore.open(tmp_path / "meta.sqlite3"))
    try:
        await store.put_tag(KEY, RECORD)
        assert await store.get_tag(KEY) == RECORD
        token = await store.try_lock("lock", ttl=30)
        assert token is not None
        assert await store.try_lock("lock", ttl=30) is None
        await store.unlock("lock", token)
        assert await store.try_lock("lock", ttl=30) is not None
        assert store.available and store.errors == 0
    finally:
        await store.close()


async def test_resilient_store_answers_a_corrupt_record_as_not_known(
    tmp_path: Path, prometheus_sink: None
) -> None:
    path = tmp_path / "meta.sqlite3"
    store = ResilientMetaStore(await SqliteMetaStore.open(path))
    try:
        await store.put_tag(KEY, RECORD)
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE tags SET digest = 'sha256:not-hex'")
        before = failures("list_tags")
        assert await store.list_tags() == []
        assert (store.errors, store.available) == (1, False)
        assert failures("list_tags") == before + 1
    finally:
        await store.close()


async def test_resilient_store_rides_out_a_redis_outage_and_recovers(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture, prometheus_sink: None
) -> None:
    caplog.set_level(logging.INFO, logger="mirror.meta.resilient")
    prefix = unique_prefix()
    rest = FakeClock(0.0)  # the wrapper's monotonic seconds: its rest after a failure
    store = ResilientMetaStore(
        await RedisMetaStore.open(redis_server.url, prefix), retry_after=0.5, clock=rest
    )
    try:
        await store.put_tag(KEY, RECORD)
        held = await store.try_lock("held", ttl=30)
        assert held is not None
        before = failures("get_tag")

        await redis_server.stop()
        async with asyncio.timeout(3):  # bounded by the client's timeouts, never a hang
            assert await store.get_tag(KEY) is None
        assert (store.errors, store.available) == (1, False)
        assert failures("get_tag") == before + 1

        # Resting after the failure: neutral answers at once, Redis is not asked.
        started = time.monotonic()
        await store.put_tag(KEY, RECORD)
        assert await store.list_repositories(HUB) == []
        assert await store.get_access(DIGEST) is None
        assert await store.get_response("tags") is None
        assert await store.get_rate_limit(HUB) is None
        await store.record_access({DIGEST: Access(1.0)})
        local = await store.try_lock("lock", ttl=30)
        assert local is not None  # proceed without coordination
        await store.unlock("lock", local)
        await store.unlock("held", held)
        assert time.monotonic() - started < 0.1
        assert store.errors == 1
        with pytest.raises(MetaStoreError):
            await store.ping()

        # Still down when the rest is over: one more error, but no second warning.
        rest.advance(0.6)
        assert await store.get_tag(KEY) is None
        assert store.errors == 2

        await redis_server.start()  # empty: it keeps nothing on disk
        rest.advance(0.6)
        await store.put_tag(KEY, RECORD)
        assert store.available
        check = await RedisMetaStore.open(redis_server.url, prefix)
        try:
            assert await check.get_tag(KEY) == RECORD
        finally:
            await check.close()

        lines = [(r.levelname, r.getMessage()) for r in caplog.records]
        assert [level for level, _ in lines] == ["WARNING", "INFO"]
        assert "unavailable" in lines[0][1] and "recovered" in lines[1][1]
    finally:
        await store.close()


# --- imports --------------------------------------------------------------------------------


def test_the_store_and_the_layers_above_it_load_no_metrics_library() -> None:
    """prometheus-client is the server's: `mirror serve --workers N` must set up its
    multiprocess mode before anything imports it, and a command needs none of it."""
    modules = [
        "mirror.meta",
        "mirror.cache.manifests",
        "mirror.cache.eviction",
        "mirror.admin",
        "mirror.admin.bundle",
        "mirror.admin.gc",
        "mirror.admin.inventory",
        "mirror.admin.prefetch",
    ]
    code = f"import sys, {', '.join(modules)}; print('prometheus_client' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
