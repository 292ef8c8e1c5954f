"""The per-upstream circuit breaker: after circuit_failures connection failures in a row the
upstream is not contacted for a back-off period (doubling after a failed probe, up to a cap);
one probe then goes through and an answer closes the circuit. Cached tags are still served
stale meanwhile."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from mirror.config import UpstreamSettings
from mirror.errors import RegistryError
from mirror.upstream.breaker import BreakerSettings
from mirror.upstream.client import UpstreamClient, UpstreamError
from mirror.upstream.options import ClientOptions
from testkit.clock import FakeClock
from testkit.fakeupstream import DOCKER_MANIFEST, FakeRegistry, Manifest
from tests.clients import pull_like_docker
from tests.conftest import StartMirror
from tests.connections import ConnectionCounter
from tests.scrape import scrape

FAILURES = 3
BACKOFF = 10.0
MAX_BACKOFF = 20.0
BOUND = 10.0


def closed_port() -> int:
    """A local port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@asynccontextmanager
async def answering(port: int) -> AsyncIterator[list[str]]:
    """An upstream on `port` that answers every request 404; yields the paths it got."""
    paths: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        paths.append(request.path)
        return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield paths
    finally:
        await runner.cleanup()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(now=0.0)


@pytest.fixture
def port() -> int:
    return closed_port()


@pytest.fixture
async def client(port: int, clock: FakeClock) -> AsyncIterator[UpstreamClient]:
    options = ClientOptions(
        breaker=BreakerSettings(failures=FAILURES, backoff=BACKOFF, max_backoff=MAX_BACKOFF),
        negative_ttl=0,
        clock=clock,
    )
    client = UpstreamClient(
        UpstreamSettings(host="registry.test:1", url=f"http://127.0.0.1:{port}"), options
    )
    yield client
    await client.close()


async def pull(client: UpstreamClient) -> str:
    """What one manifest request ended in: its error message."""
    with pytest.raises(RegistryError) as failure:
        await client.get_manifest("team/app", "1", DOCKER_MANIFEST)
    return str(failure.value)


async def open_circuit(client: UpstreamClient) -> None:
    for _ in range(FAILURES):
        assert "is unreachable" in await pull(client)
    assert client.breaker.is_open


async def test_after_n_connection_failures_the_upstream_is_not_contacted(
    client: UpstreamClient, port: int
) -> None:
    await open_circuit(client)
    async with ConnectionCounter(port) as counter:  # the upstream is back, but unasked
        for _ in range(5):
            with pytest.raises(UpstreamError) as failure:
                await client.get_manifest("team/app", "1", DOCKER_MANIFEST)
            assert failure.value.status == 503
            assert f"upstream 127.0.0.1:{port} is unreachable" in str(failure.value)
            assert "circuit open" in str(failure.value)
            assert failure.value.headers["Retry-After"] == "10"
        assert await counter.settle() == 0


async def test_after_the_backoff_one_probe_goes_through_and_an_answer_closes_the_circuit(
    client: UpstreamClient, port: int, clock: FakeClock
) -> None:
    await open_circuit(client)
    clock.advance(BACKOFF)
    async with answering(port) as paths:
        assert (await pull(client)) == f"not found at upstream 127.0.0.1:{port}"  # the probe
        assert not client.breaker.is_open
        await pull(client)
        assert len(paths) == 2


async def test_a_failed_probe_doubles_the_backoff_up_to_the_cap(
    client: UpstreamClient, clock: FakeClock
) -> None:
    await open_circuit(client)
    for backoff in (BACKOFF, 2 * BACKOFF, MAX_BACKOFF):
        clock.advance(backoff - 1)
        assert "circuit open" in await pull(client)
        clock.advance(1)
        assert "circuit open" not in await pull(client)  # the probe, refused again
        assert client.breaker.is_open


async def test_answers_of_any_status_are_not_connection_failures(
    client: UpstreamClient, port: int
) -> None:
    async with answering(port):
        for _ in range(FAILURES + 2):
            assert "not found" in await pull(client)
    assert not client.breaker.is_open


async def test_a_success_resets_the_count_of_failures_in_a_row(
    client: UpstreamClient, port: int
) -> None:
    for _ in range(FAILURES - 1):
        await pull(client)
    async with answering(port):
        await pull(client)
    for _ in range(FAILURES - 1):
        await pull(client)
    assert not client.breaker.is_open


# --- through the mirror ---------------------------------------------------------------------


async def test_cached_tags_are_served_stale_while_the_circuit_is_open(
    start_mirror: StartMirror, alpine: Manifest
) -> None:
    async with FakeRegistry() as upstream:
        upstream.push_image("library/alpine", "3.19", alpine)
        mirror = await start_mirror(upstream.url, tag_ttl=0, circuit_failures=2)
        await pull_like_docker(mirror, "library/alpine", "3.19")
    # The upstream is gone: two pulls meet refused connections, then the circuit opens.
    for _ in range(4):
        resp = await mirror.get("/v2/library/alpine/manifests/3.19")
        assert resp.status == 200
        assert await resp.read() == alpine.data

    resp = await mirror.get("/v2/library/other/manifests/1")
    assert resp.status == 503
    assert "circuit open" in (await resp.json())["errors"][0]["message"]
    assert resp.headers["Retry-After"]

    metrics = await scrape(mirror)
    upstream_label = frozenset({("upstream", "docker.io")})
    assert metrics[("mirror_upstream_circuit_open", upstream_label)] == 1
    assert metrics[("mirror_upstream_circuit_rejections_total", upstream_label)] >= 3


class Unanswered(AbstractResolver):
    """A DNS server that never answers: connections hang until a timeout."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def close(self) -> None:
        pass


async def test_a_request_timeout_while_connecting_counts_as_a_connection_failure() -> None:
    """A blackholed upstream: request_timeout runs out before connect_timeout, during the
    connect; that is a connection failure all the same."""
    options = ClientOptions(
        request_timeout=0.1,
        connect_timeout=BOUND,
        breaker=BreakerSettings(failures=2, backoff=BACKOFF, max_backoff=MAX_BACKOFF),
        resolver=Unanswered(),
    )
    client = UpstreamClient(
        UpstreamSettings(host="blackhole.test", url="http://blackhole.test"), options
    )
    try:
        for _ in range(2):
            assert "timed out" in await pull(client)
        assert client.breaker.is_open
        assert "circuit open" in await pull(client)
    finally:
        await client.close()
