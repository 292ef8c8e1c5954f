"""Replicas sharing one bucket and one Redis act as one mirror: one upstream download per
blob between them, streamed live to every client of every replica, verified before any
client gets its last byte; one upstream request per manifest and per tag revalidation; and
the replica-to-replica endpoint answers nobody without the cluster secret.

In-process replicas over real HTTP (see `cluster_fixtures`); the process-level faults (kill
-9, SIGSTOP, real clients) are in `tests/cluster/`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
from prometheus_client import REGISTRY

from mirror.reference import Digest
from mirror.upstream import peers
from testkit.fakeupstream import Blob, FakeRegistry, Fault, make_image, random_layer
from testkit.seaweed import SeaweedFS
from tests.cluster_fixtures import CLUSTER_SECRET, StartReplica
from tests.conftest import Client, answered
from tests.s3_fixtures import s3_store

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
        Fault("slow", method="GET", path_contains=blob.digest, chunk_delay=CHUNK_DELAY, times=None)
    )


async def fetch(replica: Client, blob: Blob, first_bytes: list[float]) -> bytes:
    """The blob's body through `replica`; the upstream bytes received so far (cluster-wide)
    when its first bytes arrived go to `first_bytes`."""
    async with replica.get(f"/v2/team/app/blobs/{blob.digest}") as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.content.readany()
        first_bytes.append(counted("mirror_upstream_bytes_total", upstream="docker.io"))
        return body + await resp.content.read()


async def test_every_client_of_every_replica_streams_one_upstream_download(
    start_replica: StartReplica, upstream: FakeRegistry
) -> None:
    blob = big_blob(upstream, seed=1)
    slow_upstream(upstream, blob)
    replicas = [await start_replica(name, upstream.url) for name in ("r1", "r2", "r3")]
    received_before = counted("mirror_upstream_bytes_total", upstream="docker.io")
    joins = {
        role: counted("mirror_cluster_blob_joins_total", role=role)
        for role in ("leader", "local_waiter", "remote_waiter")
    }
    first_bytes: list[float] = []

    # Replica 1 leads: its client arrives first; the others join while the bytes arrive.
    leading = asyncio.create_task(fetch(replicas[0], blob, first_bytes))
    await upstream.wait_for_request(method="GET", kind="blob")
    clients = [leading] + [
        asyncio.create_task(fetch(replica, blob, first_bytes))
        for index, replica in enumerate(replicas)
        for _ in range(CLIENTS_PER_REPLICA - (index == 0))
    ]
    bodies = await asyncio.gather(*clients)

    assert all(body == blob.data for body in bodies)
    assert answered(upstream, method="GET", kind="blob") == 1
    size = len(blob.data)
    assert all(seen - received_before < size for seen in first_bytes), (
        "every client had bytes before the upstream had sent its last one"
    )
    grew = {
        role: counted("mirror_cluster_blob_joins_total", role=role) - joins[role] for role in joins
    }
    assert grew == {"leader": 1, "remote_waiter": 2, "local_waiter": 3 * CLIENTS_PER_REPLICA - 3}


async def test_a_late_joiner_on_another_replica_gets_the_whole_blob(
    start_replica: StartReplica, upstream: FakeRegistry
) -> None:
    blob = big_blob(upstream, seed=2)
    slow_upstream(upstream, blob)
    first, second = [await start_replica(name, upstream.url) for name in ("r1", "r2")]
    received_before = counted("mirror_upstream_bytes_total", upstream="docker.io")
    seen: list[float] = []
    leading = asyncio.create_task(fetch(first, blob, seen))

    deadline = time.monotonic() + 10
    while counted("mirror_upstream_bytes_total", upstream="docker.io") - received_before < BIG / 2:
        assert time.monotonic() < deadline, "the download never got halfway"
        await asyncio.sleep(0.01)
    late = await fetch(second, blob, seen)

    assert late == blob.data and await leading == blob.data
    assert answered(upstream, method="GET", kind="blob") == 1


async def test_corrupted_upstream_bytes_reach_no_client_and_nothing_is_stored(
    start_replica: StartReplica, upstream: FakeRegistry, seaweed: SeaweedFS, tmp_path: Path
) -> None:
    blob = big_blob(upstream, seed=3)
    upstream.add_fault(Fault("corrupt", method="GET", path_contains=blob.digest, times=None))
    slow_upstream(upstream, blob)
    replicas = [await start_replica(name, upstream.url) for name in ("r1", "r2")]

    async def refused(replica: Client) -> bool:
        try:
            await fetch(replica, blob, [])
        except (aiohttp.ClientPayloadError, AssertionError):
            return True
        return False

    leading = asyncio.create_task(refused(replicas[0]))
    await upstream.wait_for_request(method="GET", kind="blob")
    outcomes = await asyncio.gather(leading, *(refused(replica) for replica in replicas))

    assert all(outcomes), "no client completes a transfer of bytes that do not verify"
    # The leader's failure may be taken over once, never more.
    assert answered(upstream, method="GET", kind="blob") <= 2
    store = s3_store(tmp_path, data_dir=tmp_path / "look")
    try:
        assert await asyncio.to_thread(store.blob_size, Digest.parse(blob.digest)) is None
    finally:
        await store.close()


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
