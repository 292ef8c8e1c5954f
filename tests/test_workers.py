"""Workers: `mirror serve` runs one worker process per CPU it may use by default (`workers =
"auto"`), all on one port, and they behave as one mirror. However the kernel spreads the
clients over them, a cold blob is downloaded once and a stale tag revalidated once (with the
embedded SQLite store and with Redis); they are one replica and do its housekeeping once;
and none outlives its supervisor."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from mirror.cpus import usable_cpus
from mirror.meta import MetaStore
from mirror.meta.redis import RedisMetaStore
from mirror.meta.sqlite import SqliteMetaStore
from testkit import procs
from testkit.fakeupstream import FakeRegistry, Manifest, random_layer
from testkit.mirrorproc import MirrorProcess
from testkit.waiting import wait_until
from tests.clients import ACCEPT, get_blob
from tests.conftest import answered, files_under
from tests.meta_fixtures import RedisServer

T = TypeVar("T")
MB = 1024 * 1024
# Long enough that a worker waiting for its sibling's download or revalidation (bounded by
# request_timeout) outwaits a test spreading its clients on a busy machine.
PATIENT = {"MIRROR_REQUEST_TIMEOUT": "30"}
AUTO = "(workers = auto: one per CPU this process may use)"


@dataclasses.dataclass(frozen=True)
class Backend:
    """The metadata store the workers share: the `serve` arguments naming it, and how a test
    opens it too."""

    args: list[str]
    open: Callable[[], Awaitable[MetaStore]]


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, data_dir: Path) -> Backend:
    if request.param == "sqlite":
        return Backend([], lambda: SqliteMetaStore.open(data_dir / "meta.sqlite3"))
    redis: RedisServer = request.getfixturevalue("redis_server")  # private to this test
    return Backend(["--redis-url", redis.url], lambda: RedisMetaStore.open(redis.url, "mirror:"))


@asynccontextmanager
async def one_connection_each() -> AsyncIterator[aiohttp.ClientSession]:
    """A session that opens a new connection for every request: the kernel hands each to
    whichever worker accepts it first."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        yield session


async def spread_over_workers(
    proc: MirrorProcess,
    request: Callable[[], Coroutine[Any, Any, T]],
    *,
    each: int = 2,
    at_most: int = 64,
) -> list[asyncio.Task[T]]:
    """Start `request()` one client at a time until every worker holds `each` of them; the
    clients' tasks. The requests must stay in flight (held upstream) until the test lets
    them go, so a worker's connections are its clients."""
    workers = procs.children(proc.pid)
    assert len(workers) >= 2, f"not several workers: {workers}"
    tasks: list[asyncio.Task[T]] = []

    def held() -> dict[int, int]:
        return {pid: procs.connections_on(pid, proc.port) for pid in workers}

    while min(held().values()) < each:
        assert len(tasks) < at_most, f"{at_most} clients did not reach every worker: {held()}"
        tasks.append(asyncio.create_task(request()))
        await wait_until(
            lambda: sum(held().values()) >= len(tasks),
            within=10,
            message=lambda: f"a client was not accepted and held: {held()}, {tasks[-1]}",
        )
    return tasks


# --- how many -----------------------------------------------------------------------------


async def test_by_default_one_worker_serves_per_cpu_the_mirror_may_use(
    upstream: FakeRegistry, data_dir: Path, workdir: Path
) -> None:
    two = sorted(os.sched_getaffinity(0))[:2]  # this machine's 2 CPUs, or as many as it has
    expected = min(len(two), usable_cpus())
    proc = MirrorProcess(upstream.url, data_dir, cwd=workdir, workers=None, cpus=two)
    async with proc:
        if expected == 1:
            assert f"serving in this process {AUTO}" in proc.stderr
        else:
            assert f"serving in {expected} worker processes {AUTO}" in proc.stderr
        assert len(procs.children(proc.pid)) == (0 if expected == 1 else expected)
        assert await proc.stop() == 0, proc.stderr


async def test_with_one_cpu_the_default_serves_in_the_mirror_process_itself(
    http: aiohttp.ClientSession, upstream: FakeRegistry, data_dir: Path, workdir: Path
) -> None:
    one = {min(os.sched_getaffinity(0))}
    proc = MirrorProcess(upstream.url, data_dir, cwd=workdir, workers=None, cpus=one)
    async with proc:
        async with http.get(proc.url + "/v2/") as resp:
            assert resp.status == 200
        assert f"serving in this process {AUTO}" in proc.stderr
        assert procs.children(proc.pid) == []
        assert await proc.stop() == 0, proc.stderr


# --- one mirror ---------------------------------------------------------------------------


async def test_a_cold_blob_is_downloaded_once_however_its_clients_spread_over_the_workers(
    upstream: FakeRegistry, backend: Backend, data_dir: Path, workdir: Path
) -> None:
    """The clients of both workers wait on the one download (held half way upstream); once
    it goes on, all of them get the whole blob."""
    blob = random_layer(8 * MB, seed=21)
    upstream.push_blob("library/workers", blob)
    half_way = upstream.hold_body(len(blob.data) // 2, path_contains=blob.digest)
    proc = MirrorProcess(
        upstream.url, data_dir, cwd=workdir, extra_args=backend.args, env=PATIENT, workers="2"
    )
    async with proc, one_connection_each() as http:
        clients = await spread_over_workers(
            proc, lambda: get_blob(http, proc.url, "library/workers", blob.digest)
        )
        await half_way.wait_reached(within=10)
        half_way.release()
        assert await asyncio.gather(*clients) == [blob.data] * len(clients)
        assert answered(upstream, kind="blob", method="GET") == 1
        assert await proc.stop() == 0, proc.stderr
        assert not proc.killed
    assert files_under(data_dir / "tmp") == set()


async def test_a_stale_tag_is_revalidated_once_however_its_clients_spread_over_the_workers(
    upstream: FakeRegistry, alpine: Manifest, backend: Backend, data_dir: Path, workdir: Path
) -> None:
    """Every client of both workers finds the tag stale: one worker asks the upstream (its
    HEAD held until the clients are spread), the others wait for its answer."""
    env = {**PATIENT, "MIRROR_TAG_CACHE_SECONDS": "0"}  # every request reads the record
    proc = MirrorProcess(
        upstream.url, data_dir, cwd=workdir, extra_args=backend.args, env=env, workers="2"
    )

    async def pull_tag(http: aiohttp.ClientSession) -> bytes:
        async with http.get(f"{proc.url}/v2/library/alpine/manifests/3.19", headers=ACCEPT) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.read()

    async with proc, one_connection_each() as http:
        assert await pull_tag(http) == alpine.data
        await _backdate_tag_records(backend, days=1)  # past the 5-minute tag_ttl
        upstream.reset_counts()
        head = upstream.hold_body(0, server="registry", path_contains="/manifests/", times=None)
        clients = await spread_over_workers(proc, lambda: pull_tag(http))
        await head.wait_reached(within=10)
        head.release()
        assert await asyncio.gather(*clients) == [alpine.data] * len(clients)
        assert answered(upstream, kind="manifest", method="HEAD") == 1
        assert answered(upstream, kind="manifest", method="GET") == 0


async def _backdate_tag_records(backend: Backend, days: int) -> None:
    """Make every tag record older, as if the days had passed since the upstream said it."""
    store = await backend.open()
    try:
        for key, record in await store.list_tags():
            older = record.confirmed_at - days * 86400
            await store.put_tag(key, dataclasses.replace(record, confirmed_at=older))
    finally:
        await store.close()


async def test_the_workers_serve_as_one_replica_and_do_its_housekeeping_once(
    upstream: FakeRegistry, data_dir: Path, workdir: Path
) -> None:
    """Every worker answers the status API as the same replica, the live replicas (their
    heartbeats in the metadata store) count it once, and one of them measures the cache
    and prunes the kept lists at start."""
    blob = random_layer(MB, seed=22)
    upstream.push_blob("library/workers", blob)
    held = upstream.hold_body(len(blob.data) // 2, path_contains=blob.digest)
    env = {"MIRROR_LOG_LEVEL": "debug"}
    proc = MirrorProcess(upstream.url, data_dir, cwd=workdir, env=env, workers="2")
    async with proc, one_connection_each() as http:
        # Both workers are serving: each holds a client of the held blob.
        clients = await spread_over_workers(
            proc, lambda: get_blob(http, proc.url, "library/workers", blob.digest), each=1
        )
        answers = []
        for _ in range(8):
            async with http.get(proc.url + "/api/status") as resp:
                status = await resp.json()
            answers.append((status["replica"]["id"], status["cluster"]["live_replicas"]))
        assert len(set(answers)) == 1 and answers[0][1] == 1, answers
        held.release()
        await asyncio.gather(*clients)
        assert proc.stderr.count("mirror.server.app: cache holds") == 1, proc.stderr
        assert proc.stderr.count("Deleting all expired responses") == 1, proc.stderr


# --- the supervisor -------------------------------------------------------------------------


async def test_the_command_line_does_not_load_metrics_before_choosing_how(tmp_path: Path) -> None:
    """`serve` with several workers switches prometheus-client to multiprocess mode before
    importing it; a module that imports it earlier (through `mirror.cli`) would silently
    lose every worker's metrics."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys, mirror.cli; print('prometheus_client' in sys.modules)",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    assert out.decode().strip() == "False"


async def test_workers_end_when_their_supervisor_is_killed(
    upstream: FakeRegistry, data_dir: Path, workdir: Path
) -> None:
    """A SIGKILLed supervisor cannot stop its workers; the kernel does, so none keeps the
    port or writes into a data dir that a new mirror will clean."""
    proc = MirrorProcess(upstream.url, data_dir, cwd=workdir, workers="2")
    async with proc:
        # The mirror answers once one worker does; the other may still be starting.
        children = await wait_until(
            lambda: found if len(found := procs.children(proc.pid)) == 2 else None,
            within=10,
            message="the supervisor runs two workers",
        )
        os.kill(proc.pid, signal.SIGKILL)
        await wait_until(
            lambda: not any(procs.alive(pid) for pid in children),
            within=10,
            message="workers outlived their supervisor",
            interval=0.05,
        )
