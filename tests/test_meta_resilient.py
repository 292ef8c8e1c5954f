"""The resilient wrapper over a metadata store: answers and locks pass through, a corrupt record
is answered as not known (and counted), and a Redis that goes away is ridden out with neutral
answers, one warning, and a recovery once it is back."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from mirror import observe
from mirror.meta.redis import RedisMetaStore
from mirror.meta.resilient import ResilientMetaStore
from mirror.meta.sqlite import SqliteMetaStore
from mirror.meta.store import Access, Link, MetaStoreError
from mirror.metrics import PrometheusSink
from testkit.clock import FakeClock
from tests.meta_fixtures import RedisServer, unique_prefix
from tests.meta_samples import DIGEST, HUB, KEY, RECORD

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
        await store.add_links([Link(HUB, "library/alpine", DIGEST)])
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
        # Not known to be linked: the mirror asks the upstream, or (offline) serves nothing.
        assert not await store.has_link(Link(HUB, "library/alpine", DIGEST))
        assert await store.get_access(DIGEST) is None
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
