"""What only one backend of the metadata store has: SQLite's file that outlives the process and
coordinates the stores sharing it, Redis's key prefixes on a shared server and its masked
URL, how each reports a record that does not parse, and which backend a data dir gets."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest
from redis.asyncio import Redis

from mirror.meta import open_meta_store
from mirror.meta.redis import RedisMetaStore, masked_url
from mirror.meta.resilient import ResilientMetaStore
from mirror.meta.sqlite import SCHEMA_VERSION, SqliteMetaStore
from mirror.meta.store import Access, Link, MetaStoreError, RateLimit
from testkit.mirrorproc import free_port
from tests.meta_fixtures import RedisServer, forget_prefix, unique_prefix
from tests.meta_samples import DIGEST, HUB, KEY, OCI, RECORD

# --- SQLite -------------------------------------------------------------------------------


async def test_sqlite_keeps_records_across_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "meta.sqlite3"
    store = await SqliteMetaStore.open(path)
    await store.put_tag(KEY, RECORD)
    await store.add_links([Link(HUB, "library/alpine", DIGEST)])
    await store.close()

    reopened = await SqliteMetaStore.open(path)
    try:
        assert await reopened.get_tag(KEY) == RECORD
        assert await reopened.has_link(Link(HUB, "library/alpine", DIGEST))
        assert await reopened.list_repositories(HUB) == ["library/alpine"]
    finally:
        await reopened.close()


async def test_a_version_1_sqlite_file_loses_its_typed_in_catalog_and_keeps_its_tags(
    tmp_path: Path,
) -> None:
    """Version 1 kept a catalog of whatever names clients typed: it is not carried over;
    the catalog is read from links now."""
    path = tmp_path / "meta.sqlite3"
    store = await SqliteMetaStore.open(path)
    await store.put_tag(KEY, RECORD)
    await store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE links")
        conn.execute("CREATE TABLE repositories (upstream TEXT, repo TEXT)")
        conn.execute("INSERT INTO repositories VALUES (?, 'nobody/typed-this')", (HUB,))
        conn.execute("PRAGMA user_version = 1")

    upgraded = await SqliteMetaStore.open(path)
    try:
        assert await upgraded.get_tag(KEY) == RECORD
        assert await upgraded.list_repositories(HUB) == []
        await upgraded.add_links([Link(HUB, "library/alpine", DIGEST)])
        assert await upgraded.list_repositories(HUB) == ["library/alpine"]
    finally:
        await upgraded.close()
    with sqlite3.connect(path) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    assert "repositories" not in tables and version == SCHEMA_VERSION


async def test_a_version_3_sqlite_file_loses_its_kept_tag_lists(tmp_path: Path) -> None:
    """Up to version 3 the store kept tag lists; `mirror.upstream.lists` keeps them now."""
    path = tmp_path / "meta.sqlite3"
    await (await SqliteMetaStore.open(path)).close()
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE responses (key TEXT PRIMARY KEY, body BLOB)")
        conn.execute("PRAGMA user_version = 3")
    await (await SqliteMetaStore.open(path)).close()
    with sqlite3.connect(path) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    assert "responses" not in tables and version == SCHEMA_VERSION


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
        await one.add_links([Link(HUB, "library/alpine", DIGEST)])
        await one.record_access({DIGEST: Access(1.0, {"library/alpine"})})
        assert await one.try_lock("lock", ttl=30) is not None

        assert await two.get_tag(KEY) is None
        assert await two.list_repositories(HUB) == []
        assert not await two.has_link(Link(HUB, "library/alpine", DIGEST))
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
        await store.add_links([Link(HUB, "library/alpine", DIGEST)])

        keys = sorted(map(str, await raw.keys("*")))
        assert keys == [
            "deploy-a:access",
            f"deploy-a:access-repos:{DIGEST}",
            f"deploy-a:catalog:{HUB}",
            f"deploy-a:linked:{HUB}/library/alpine",
            f"deploy-a:links:{DIGEST}",
            "deploy-a:lock:lock",
            f"deploy-a:ratelimit:{HUB}",
            f"deploy-a:tag:{HUB}/library/alpine:3.19:{OCI}",
        ]
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
