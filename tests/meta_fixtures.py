"""Fixtures for the metadata store: a private redis-server and each implementation.

`redis_url` is `REDIS_URL` from the environment when set (a shared server: tests keep to
their own key prefixes and never flush it), else a private `redis-server` for the test.
`redis_server` is always private, for tests that stop and restart it. `meta_store` is an
opened store, once per implementation: SQLite, Redis, and the resilient wrapper over each.
`meta_clock` is the unix time the store measures its own expiries with (SQLite's); Redis
expires keys by its server's clock, so a test that lets a TTL run out moves `meta_clock`
and then waits (`wait_until`, at most UNTIL_TIMEOUT) for the store to say so: at once for
SQLite, soon for Redis.

Everything is asynchronous and bounded, as in `testkit.mirrorproc`: waiting on redis-server
never blocks the event loop the code under test runs in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from redis.asyncio import Redis

from mirror.meta.redis import RedisMetaStore
from mirror.meta.resilient import ResilientMetaStore
from mirror.meta.sqlite import SqliteMetaStore
from mirror.meta.store import MetaStore
from testkit.clock import FakeClock
from testkit.mirrorproc import free_port
from testkit.redis import redis_argv
from testkit.waiting import wait_until

START_TIMEOUT = 5.0  # until it answers PING
STOP_TIMEOUT = 3.0  # from SIGTERM to the exit; SIGKILL after that
UNTIL_TIMEOUT = 5.0  # seconds a test waits for an expiry to show


class RedisServer:
    """A private redis-server on a loopback port, keeping nothing on disk. `stop()` and
    `start()` again (same port, same URL, empty) stand for losing Redis and getting it back.

        async with RedisServer(tmp_dir) as server:
            ...  # server.url is redis://127.0.0.1:<port>/0
    """

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> RedisServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start it and wait (bounded) until it answers PING."""
        assert self._proc is None, "redis-server is already running"
        self._proc = await asyncio.create_subprocess_exec(
            *redis_argv(self.port, self.workdir),
            *("--logfile", str(self.workdir / "redis.log")),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await self._wait_until_ready(self._proc)
        except BaseException:
            await self.stop()
            raise

    async def _wait_until_ready(self, proc: asyncio.subprocess.Process) -> None:
        async def answers() -> bool:
            if proc.returncode is not None:
                log = self.workdir / "redis.log"
                raise AssertionError(f"redis-server exited with {proc.returncode}; see {log}")
            return await _answers_ping(self.port)

        await wait_until(
            answers, within=START_TIMEOUT, message="redis-server answers PING", ignoring=(OSError,)
        )

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _answers_ping(port: int) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"PING\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 1.0) == b"+PONG\r\n"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def unique_prefix() -> str:
    """A key prefix no other test uses, so tests can share one Redis."""
    return f"test-{secrets.token_hex(4)}:"


async def forget_prefix(url: str, prefix: str) -> None:
    """Delete every key under `prefix`, so a shared Redis is left as the test found it."""
    client = Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def redis_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RedisServer]:
    """A private redis-server, stopped after the test (which may stop and start it)."""
    async with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
async def redis_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """`REDIS_URL` when set, else the URL of a private redis-server."""
    if url := os.environ.get("REDIS_URL"):
        yield url
        return
    async with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@dataclass(frozen=True)
class MetaBackend:
    redis_url: str | None  # None: SQLite
    resilient: bool  # wrapped in ResilientMetaStore


@pytest.fixture(params=["sqlite", "redis", "resilient-sqlite", "resilient-redis"])
def meta_backend(request: pytest.FixtureRequest) -> MetaBackend:
    """Which implementation to test. Sync, so that only the Redis cases start a server (an
    async fixture cannot ask for another one on demand)."""
    name: str = request.param
    resilient = name.startswith("resilient-")
    if name.removeprefix("resilient-") == "sqlite":
        return MetaBackend(None, resilient)
    url: str = request.getfixturevalue("redis_url")
    return MetaBackend(url, resilient)


@pytest.fixture
def meta_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def meta_store(
    meta_backend: MetaBackend, meta_clock: FakeClock, tmp_path: Path
) -> AsyncIterator[MetaStore]:
    """An opened store, closed after the test."""
    url, prefix = meta_backend.redis_url, unique_prefix()
    store: MetaStore
    if url is None:
        store = await SqliteMetaStore.open(tmp_path / "meta.sqlite3", clock=meta_clock)
    else:
        store = await RedisMetaStore.open(url, prefix)
    if meta_backend.resilient:
        store = ResilientMetaStore(store)
    yield store
    await store.close()
    if url is not None:
        await forget_prefix(url, prefix)


@pytest.fixture(params=["sqlite", "redis"])
def meta_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings for a mirror under test, once with the embedded SQLite store and once with
    Redis (its own key prefix on the shared test server)."""
    if request.param == "sqlite":
        return {}
    url: str = request.getfixturevalue("redis_url")
    return {"redis_url": url, "redis_key_prefix": unique_prefix()}
