"""Replicas sharing one bucket and one Redis act as one mirror: one upstream download per
blob between them, streamed live to every client of every replica, verified before any
client gets its last byte; one upstream request per manifest and per tag revalidation; and
the replica-to-replica endpoint answers nobody without the cluster secret.

In-process replicas over real HTTP (see `cluster_fixtures`); the process-level faults (kill
-9, SIGSTOP, real clients) are in `tests/cluster/`."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import REGISTRY

from mirror.reference import Digest
from mirror.upstream import peers
from testkit.fakeupstream import Blob, FakeRegistry, Fault, make_image, random_layer
from testkit.seaweed import SeaweedFS
from testkit.waiting import wait_until
from tests.client_auth.helpers import PASSWORDS, basic, write_htpasswd
from tests.cluster_fixtures import (
    CLUSTER_SECRET,
    StartReplica,
    blob_key,
    expire_lease,
    stored_keys,
)
from tests.conftest import Client, answered

BIG = 4 * 1024 * 1024  # 64 chunks of the fake upstream: slowed down, a download of ~1.3 s
CHUNK_DELAY = 0.02
CLIENTS_PER_REPLICA = 3


def counted(name: str, **labels: str) -> float:
    """A counter of this test process (every in-process replica counts into it)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def big_blob(upstream: FakeRegistry, seed: int) -> Blob:
    image = make_image(layers=[random_layer(BIG, seed=seed)], seed=seed)
    upstream.push_image("team/app", "1", image)
    layer = image.blobs[-1]
    assert len(layer.data) >= BIG
    return layer


def slow_upstream(upstream: FakeRegistry, blob: Blob) -> None:
    upstream.add_fault(
        Fault("slow", server="cdn", path_contains=blob.digest, chunk_delay=CHUNK_DELAY, times=None)
    )


@dataclass
class Pull:
    """One client's GET of a blob through a replica, running: `streaming` is set when its
    first bytes arrive, `body` ends with all of them."""

    streaming: asyncio.Event
    body: asyncio.Task[bytes]

    async def wait_streaming(self, within: float) -> None:
        try:
            async with asyncio.timeout(within):
                await self.streaming.wait()
        except TimeoutError:
            raise AssertionError(f"a client got no bytes within {within} s") from None


def pull(replica: Client, blob: Blob) -> Pull:
    streaming = asyncio.Event()

    async def get() -> bytes:
        async with replica.get(f"/v2/team/app/blobs/{blob.digest}") as resp:
            assert resp.status == 200, await resp.text()
            first = await resp.content.readany()
            streaming.set()
            return first + await resp.content.read()

    return Pull(streaming, asyncio.create_task(get()))


async def test_every_client_of_every_replica_streams_one_upstream_download(
    start_replica: StartReplica, upstream: FakeRegistry
) -> None:
    blob = big_blob(upstream, seed=1)
    slow_upstream(upstream, blob)
    last_byte = upstream.hold_body(len(blob.data) - 1, path_contains=blob.digest)
    replicas = [await start_replica(name, upstream.url) for name in ("r1", "r2", "r3")]
    joins = {
        role: counted("mirror_cluster_blob_joins_total", role=role)
        for role in ("leader", "local_waiter", "remote_waiter")
    }

    # Replica 1 leads: its client arrives first; the others join while the bytes arrive.
    pulls = [pull(replicas[0], blob)]
    await upstream.wait_for_request(method="GET", kind="blob")
    pulls += [
        pull(replica, blob)
        for index, replica in enumerate(replicas)
        for _ in range(CLIENTS_PER_REPLICA - (index == 0))
    ]
    # The upstream keeps its last byte until every client of every replica has bytes.
    await asyncio.gather(*(p.wait_streaming(within=10) for p in pulls))
    last_byte.release()
    bodies = await asyncio.gather(*(p.body for p in pulls))

    assert all(body == blob.data for body in bodies)
    assert answered(upstream, method="GET", kind="blob") == 1
    grew = {
        role: counted("mirror_cluster_blob_joins_total", role=role) - joins[role] for role in joins
    }
    assert grew == {"leader": 1, "remote_waiter": 2, "local_waiter": 3 * CLIENTS_PER_REPLICA - 3}


async def test_a_late_joiner_on_another_replica_gets_the_whole_blob(
    start_replica: StartReplica, upstream: FakeRegistry
) -> None:
    blob = big_blob(upstream, seed=2)
    halfway = upstream.hold_body(len(blob.data) // 2, path_contains=blob.digest)
    first, second = [await start_replica(name, upstream.url) for name in ("r1", "r2")]

    leading = pull(first, blob)
    await halfway.wait_reached(within=10)
    late = pull(second, blob)
    # It has the first half while the upstream still holds the second.
    await late.wait_streaming(within=10)
    halfway.release()

    assert await late.body == blob.data and await leading.body == blob.data
    assert answered(upstream, method="GET", kind="blob") == 1


async def test_corrupted_upstream_bytes_reach_no_client_and_nothing_is_stored(
    start_replica: StartReplica, upstream: FakeRegistry, seaweed: SeaweedFS, tmp_path: Path
) -> None:
    blob = big_blob(upstream, seed=3)
    # Every answer of the blob's bytes is corrupted, a ranged one (a takeover's) too.
    upstream.add_fault(Fault("corrupt", server="cdn", path_contains=blob.digest, times=None))
    slow_upstream(upstream, blob)
    replicas = [await start_replica(name, upstream.url) for name in ("r1", "r2")]

    async def refused(pulled: Pull) -> bool:
        try:
            await pulled.body
        except (aiohttp.ClientPayloadError, AssertionError):
            return True
        return False

    leading = pull(replicas[0], blob)
    await upstream.wait_for_request(method="GET", kind="blob")
    others = [pull(replica, blob) for replica in replicas for _ in range(CLIENTS_PER_REPLICA)]
    outcomes = await asyncio.gather(*(refused(p) for p in [leading, *others]))

    assert all(outcomes), "no client completes a transfer of bytes that do not verify"
    # The leader's failure may be taken over once, never more.
    assert answered(upstream, method="GET", kind="blob") <= 2
    assert await stored_keys(seaweed, tmp_path) == []


async def test_the_relay_endpoint_answers_only_the_cluster(
    start_replica: StartReplica, upstream: FakeRegistry
) -> None:
    image = make_image(seed=4)
    upstream.push_image("team/app", "1", image)
    replica = await start_replica("r1", upstream.url)
    blob = image.blobs[0]
    async with replica.get(f"/v2/team/app/blobs/{blob.digest}") as resp:
        assert resp.status == 200 and await resp.read() == blob.data
    path = peers.relay_path(Digest.parse(blob.digest))

    async def relay(headers: dict[str, str]) -> tuple[int, bytes]:
        async with replica.get(path, headers=headers) as resp:
            return resp.status, await resp.read()

    now = time.time()
    status, body = await relay({})
    assert status == 404 and b"NOT_FOUND" in body
    wrong = peers.signed_headers("not-the-cluster-secret!", "GET", path, now)
    assert (await relay(wrong))[0] == 404
    stale = peers.signed_headers(CLUSTER_SECRET, "GET", path, now - 10 * peers.MAX_SKEW)
    assert (await relay(stale))[0] == 404
    assert await relay(peers.signed_headers(CLUSTER_SECRET, "GET", path, now)) == (200, blob.data)

    unknown = peers.relay_path(Digest.parse("sha256:" + "0" * 64))
    async with replica.get(
        unknown, headers=peers.signed_headers(CLUSTER_SECRET, "GET", unknown, now)
    ) as resp:
        assert resp.status == 404
    assert answered(upstream, method="GET", kind="blob") == 1, "a relay never fetches"


async def test_one_manifest_fetch_and_one_tag_revalidation_across_replicas(
    start_replica: StartReplica, upstream: FakeRegistry
) -> None:
    image = make_image(seed=5)
    upstream.push_image("team/app", "1", image)
    # Every pull revalidates; slow answers make the replicas' requests overlap.
    replicas = [await start_replica(name, upstream.url, tag_ttl=0) for name in ("r1", "r2")]
    upstream.add_fault(Fault("slow", path_contains="/manifests/", delay=0.3, times=None))
    accept = {"Accept": image.media_type}

    async def pull(replica: Client) -> bytes:
        async with replica.get("/v2/team/app/manifests/1", headers=accept) as resp:
            assert resp.status == 200
            return await resp.read()

    assert await asyncio.gather(*(pull(r) for r in replicas)) == [image.data] * 2
    assert answered(upstream, method="GET", kind="manifest") == 1
    upstream.reset_counts()
    assert await asyncio.gather(*(pull(r) for r in replicas)) == [image.data] * 2
    assert answered(upstream, method="HEAD", kind="manifest") == 1
    assert answered(upstream, method="GET", kind="manifest") == 0


async def test_the_relay_endpoint_asks_for_the_cluster_secret_not_client_credentials(
    start_replica: StartReplica, upstream: FakeRegistry, tmp_path: Path
) -> None:
    """With client authentication on, the endpoint is no client route: a client's valid
    credentials get the 404 of an endpoint that does not exist, and a replica's signed
    request needs no credentials."""
    image = make_image(seed=6)
    upstream.push_image("team/app", "1", image)
    users = write_htpasswd(tmp_path / "htpasswd", PASSWORDS)
    replica = await start_replica("r1", upstream.url, htpasswd=str(users))
    client = basic("alice", PASSWORDS["alice"])
    blob = image.blobs[0]
    async with replica.get(f"/v2/team/app/blobs/{blob.digest}", headers=client) as resp:
        assert resp.status == 200 and await resp.read() == blob.data
    path = peers.relay_path(Digest.parse(blob.digest))

    async with replica.get(path, headers=client) as resp:
        assert resp.status == 404 and b"NOT_FOUND" in await resp.read()
    signed = peers.signed_headers(CLUSTER_SECRET, "GET", path, time.time())
    async with replica.get(path, headers=signed) as resp:
        assert resp.status == 200 and await resp.read() == blob.data


async def test_a_leader_that_lost_its_lease_is_relayed_no_more(
    start_replica: StartReplica,
    upstream: FakeRegistry,
    seaweed: SeaweedFS,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """A leader whose renewal finds its lease gone (run out while it stalled) is fenced: it
    cuts the replicas relaying it and answers no new relay; they take the lease over and
    fetch the rest from their own offset, while it finishes for its own clients."""
    blob = big_blob(upstream, seed=7)
    slow_upstream(upstream, blob)
    quarter = upstream.hold_body(len(blob.data) // 4, path_contains=blob.digest)
    first, second = [await start_replica(name, upstream.url) for name in ("r1", "r2")]
    takeovers = counted("mirror_cluster_lease_takeovers_total")
    leading = pull(first, blob)
    await quarter.wait_reached(within=10)
    following = pull(second, blob)
    await following.wait_streaming(within=10)

    await expire_lease(redis_url, tmp_path, blob.digest)
    path = peers.relay_path(Digest.parse(blob.digest))

    async def relay_refused() -> bool:
        headers = peers.signed_headers(CLUSTER_SECRET, "GET", path, time.time())
        async with first.get(path, headers=headers) as resp:
            return resp.status == 404

    await wait_until(relay_refused, within=10, message="the stale leader still relays")
    # Still stalled (its upstream held), it cannot have published: the follower takes over.
    assert await following.body == blob.data
    quarter.release()  # the stale leader goes on downloading, for its own client
    assert await leading.body == blob.data

    assert counted("mirror_cluster_lease_takeovers_total") - takeovers == 1
    fetched = upstream.filter_requests(server="cdn", method="GET")
    assert [r.headers.get("Range") is not None for r in fetched] == [False, True]
    assert await stored_keys(seaweed, tmp_path) == [blob_key(tmp_path, blob.digest)]


async def test_the_replicas_relaying_a_leader_that_shuts_down_finish_through_a_new_one(
    start_replica: StartReplica, upstream: FakeRegistry, seaweed: SeaweedFS, tmp_path: Path
) -> None:
    """A leader stopped mid-download aborts its upload and gives its lease up; the replicas
    relaying it take the lease over and fetch the rest from their own offset (one more
    upstream request), and the bucket ends with the blob alone, no upload left open."""
    blob = big_blob(upstream, seed=8)
    quarter = upstream.hold_body(len(blob.data) // 4, path_contains=blob.digest)
    replicas = [await start_replica(name, upstream.url) for name in ("r1", "r2", "r3")]
    leading = pull(replicas[0], blob)
    await quarter.wait_reached(within=10)
    following = [pull(replica, blob) for replica in replicas[1:] for _ in range(2)]
    await asyncio.gather(*(p.wait_streaming(within=10) for p in following))

    await replicas[0].close()

    assert await asyncio.gather(*(p.body for p in following)) == [blob.data] * len(following)
    with pytest.raises(aiohttp.ClientError):
        await leading.body
    fetched = upstream.filter_requests(server="cdn", method="GET")
    assert [r.headers.get("Range") is not None for r in fetched] == [False, True]
    assert await stored_keys(seaweed, tmp_path) == [blob_key(tmp_path, blob.digest)]
