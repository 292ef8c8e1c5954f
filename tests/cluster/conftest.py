"""Fixtures of the cluster tests: real `mirror serve` replicas sharing one bucket prefix on the
session's SeaweedFS and one private redis-server, in front of a fake upstream.

Starting processes costs seconds, so a test module shares one fake upstream (`hub`), one
Redis and one cluster of three replicas (`cluster`, with its `bucket`) among its tests, which
keep apart by using blobs and repositories of their own. Those fixtures live in the module's
event loop: every test module here says `pytestmark = pytest.mark.asyncio(loop_scope="module")`.
A test that harms its cluster (kills or pauses a replica, restarts Redis) starts its own with
`start_cluster`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from testkit.cluster import Cluster, Shared
from testkit.fakeupstream import FakeRegistry
from testkit.seaweed import SeaweedFS, unique_prefix
from tests.cluster.evidence import Bucket
from tests.meta_fixtures import RedisServer
from tests.transfers import Transfers

# In every cluster: no in-process copy of tag records, so a tag made stale in Redis is
# stale for every replica at once.
CLUSTER_ENV = {"MIRROR_TAG_CACHE_SECONDS": "0"}

StartCluster = Callable[..., Awaitable[tuple[Cluster, Bucket]]]


def shared(seaweed: SeaweedFS, redis: RedisServer, prefix: str) -> Shared:
    return Shared(f"s3://{seaweed.bucket}/{prefix}", seaweed.endpoint, redis.url, seaweed.env())


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub() -> AsyncIterator[FakeRegistry]:
    async with FakeRegistry() as registry:
        yield registry


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def redis(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RedisServer]:
    async with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def prefix() -> str:
    return unique_prefix()


@pytest.fixture(scope="module")
def bucket(seaweed: SeaweedFS, prefix: str) -> Bucket:
    return Bucket(seaweed, prefix)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(
    hub: FakeRegistry,
    redis: RedisServer,
    seaweed: SeaweedFS,
    prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Cluster]:
    """Three replicas, shared by the module's tests."""
    workdir = tmp_path_factory.mktemp("cluster")
    async with Cluster(
        hub.url, workdir, shared(seaweed, redis, prefix), extra_env=CLUSTER_ENV
    ) as replicas:
        yield replicas


@pytest_asyncio.fixture(loop_scope="module")
async def start_cluster(
    hub: FakeRegistry, seaweed: SeaweedFS, tmp_path: Path
) -> AsyncIterator[StartCluster]:
    """`await start_cluster(redis, extra_env={...})`: a cluster of three of the test's own,
    with a bucket prefix and Redis key prefix of its own, and its `Bucket`; stopped after
    the test."""
    started: list[Cluster] = []

    async def start(
        redis: RedisServer, *, extra_env: Mapping[str, str] | None = None
    ) -> tuple[Cluster, Bucket]:
        prefix = unique_prefix()
        workdir = tmp_path / f"cluster-{len(started)}"
        replicas = Cluster(
            hub.url,
            workdir,
            shared(seaweed, redis, prefix),
            extra_env={
                **CLUSTER_ENV,
                "MIRROR_REDIS_KEY_PREFIX": f"{prefix}:",
                **(extra_env or {}),
            },
        )
        await replicas.start()
        started.append(replicas)
        return replicas, Bucket(seaweed, prefix)

    try:
        yield start
    finally:
        for replicas in started:
            await replicas.stop()


@pytest.fixture(autouse=True)
def _upstream_without_faults_after_each_test(hub: FakeRegistry) -> Iterator[None]:
    """Faults and gates a test set end with it (a held answer is released)."""
    yield
    hub.clear_faults()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


@pytest_asyncio.fixture(loop_scope="module")
async def transfers(http: aiohttp.ClientSession) -> AsyncIterator[Transfers]:
    group = Transfers(http)
    try:
        yield group
    finally:
        await group.close()
