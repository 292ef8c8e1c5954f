"""`max_cold_per_client`: a client with that many blob misses in flight that it alone causes
gets 429 TOOMANYREQUESTS with Retry-After for one more; cache hits, joins of a download
another client reads, and other clients are not limited."""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request
from prometheus_client import REGISTRY

from mirror import observe
from mirror.errors import RegistryError
from mirror.server.coldmisses import ColdMissLimit, client_key
from testkit.fakeupstream import Blob, FakeRegistry, Fault, make_layer, random_layer
from testkit.waiting import wait_until
from tests.conftest import Client, StartMirror

MB = 1024 * 1024


def refused_total() -> float:
    return REGISTRY.get_sample_value("mirror_cold_misses_refused_total") or 0.0


@pytest.fixture
def blobs(upstream: FakeRegistry) -> list[Blob]:
    """Four 1 MB blobs; the first two crawl (every 64 KiB chunk after the first is
    delayed), so a client holding one open keeps its miss in flight."""
    found = [random_layer(MB, seed=2000 + i) for i in range(4)]
    for blob in found:
        upstream.push_blob("library/large", blob)
    for slow in found[:2]:
        hex_digest = slow.digest.split(":")[1]
        upstream.add_fault(
            Fault("slow", server="cdn", path_contains=hex_digest, chunk_delay=0.5, times=None)
        )
    return found


@pytest.fixture
async def limited(upstream: FakeRegistry, start_mirror: StartMirror) -> Client:
    # No abandoned download goes on: a client giving up ends its miss, which a test sees as
    # the upstream connection closing.
    return await start_mirror(upstream.url, max_cold_per_client=2, abandoned_downloads=0)


@pytest.fixture
async def other_client() -> AsyncIterator[aiohttp.ClientSession]:
    """A client from another address (127.0.0.2: the test client is 127.0.0.1)."""
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


def path_of(blob: Blob) -> str:
    return f"/v2/library/large/blobs/{blob.digest}"


async def start_reading(mirror: Client, blob: Blob) -> aiohttp.ClientResponse:
    resp = await mirror.get(path_of(blob))
    assert resp.status == 200
    assert blob.data.startswith(await resp.content.readany())
    return resp


async def test_one_cold_miss_past_the_limit_gets_429_with_retry_after(
    limited: Client,
    upstream: FakeRegistry,
    blobs: list[Blob],
    other_client: aiohttp.ClientSession,
) -> None:
    first, second, third, fourth = blobs
    held = [await start_reading(limited, first), await start_reading(limited, second)]
    before = refused_total()

    refused = await limited.get(path_of(third))
    assert refused.status == 429
    assert int(refused.headers["Retry-After"]) > 0
    body = await refused.json()
    assert body["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert "max_cold_per_client" in body["errors"][0]["message"]
    assert refused_total() - before == 1

    # Another address is its own client.
    async with other_client.get(limited.make_url(path_of(fourth))) as resp:
        assert resp.status == 200
        assert await resp.read() == fourth.data

    # Joining a download another request reads costs the upstream nothing: not limited.
    async with limited.get(path_of(first)) as joined:
        assert joined.status == 200
        assert first.data.startswith(await joined.content.readany())
    # Nor is a cache hit (the fourth blob is cached now).
    async with limited.get(path_of(fourth)) as hit:
        assert hit.status == 200

    # Once a miss ends (here: its client gives up), the client may start another.
    for resp in held:
        resp.close()
    await wait_until(
        lambda: all(r.client_left for r in upstream.filter_requests(server="cdn")[:2]),
        within=30,
        message="the given-up misses ended (their downloads cancelled)",
    )
    async with limited.get(path_of(third)) as resp:
        assert resp.status == 200
        assert await resp.read() == third.data


async def test_with_the_limit_off_a_client_may_start_any_number(
    upstream: FakeRegistry, start_mirror: StartMirror
) -> None:
    mirror = await start_mirror(upstream.url, max_cold_per_client=0)
    layers = [make_layer({f"file{i}": bytes([i])}) for i in range(3)]
    for layer in layers:
        upstream.push_blob("library/small", layer)
    upstream.add_fault(Fault("slow", server="cdn", delay=0.2, times=None))
    held = [await mirror.get(f"/v2/library/small/blobs/{layer.digest}") for layer in layers]
    assert [resp.status for resp in held] == [200, 200, 200]
    for resp in held:
        resp.close()


def test_clients_are_keyed_by_address_ipv6_by_its_64_and_by_user_when_logged_in() -> None:
    def key(remote: str) -> str:
        request = make_mocked_request("GET", "/v2/", headers={})
        return client_key(request.clone(remote=remote))

    assert key("192.0.2.7") == "192.0.2.7"
    assert key("2001:db8:1:2:aaaa::1") == key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert key("2001:db8:1:3::1") != key("2001:db8:1:2::1")
    assert key("::ffff:192.0.2.7") == "192.0.2.7"

    def logged_in() -> str:
        observe.begin_request(observe.RequestRecord(request_id="r", user="alice"))
        return key("192.0.2.7")

    assert contextvars.copy_context().run(logged_in) == "user:alice"


def test_the_table_of_clients_holds_only_clients_with_misses_in_flight() -> None:
    limit = ColdMissLimit(1)
    request = make_mocked_request("GET", "/v2/").clone(remote="192.0.2.7")
    with limit.hold(request):
        assert limit.in_flight("192.0.2.7") == 1
        with pytest.raises(RegistryError) as refused, limit.hold(request):
            pass
        assert refused.value.status == 429
    assert limit.in_flight("192.0.2.7") == 0
    assert limit.clients() == 0
