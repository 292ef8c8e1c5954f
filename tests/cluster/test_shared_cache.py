"""The replicas of a cluster are one cache: what one replica stored (one object per blob in
the bucket, one PUT for a small blob, a multipart upload for a large one) every other serves
without asking the upstream; a tag is fetched and revalidated once for all of them; cached
blobs outlive a Redis restart; and the endpoint replicas relay downloads to each other
through is closed to anyone without the cluster secret.

The part-size arithmetic (a 100 GiB blob in 12 MiB parts, within S3's 10,000 parts) is a
unit test of the S3 store: tests/test_s3_store.py::test_a_100_gib_blob_takes_12_mib_parts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import aiohttp
import pytest

from mirror.meta.redis import RedisMetaStore
from mirror.reference import Digest
from mirror.upstream.peers import relay_path, signed_headers
from testkit.cluster import Cluster, Replica
from testkit.fakeupstream import FakeRegistry, Fault, make_image, random_layer
from tests.clients import ACCEPT, pull
from tests.cluster.blobs import LARGE, MIB, WAIT, blob_url, cold_blob, stored
from tests.cluster.conftest import StartCluster
from tests.cluster.evidence import Bucket, downloads, manifest_requests
from tests.meta_fixtures import RedisServer
from tests.transfers import Transfers

pytestmark = pytest.mark.asyncio(loop_scope="module")

TAG_TTL = 300.0  # the default freshness of a tag
KEY_PREFIX = "mirror:"  # the default Redis key prefix


def requests_about(hub: FakeRegistry, repo: str, digest: str) -> int:
    """Everything the upstream was asked about a repository or a digest."""
    return sum(1 for r in hub.requests if f"/{repo}/" in r.path or digest in r.path)


@pytest.mark.parametrize(
    ("size", "parts"),
    [(64 * 1024, None), (LARGE, 3)],
    ids=["under one part: one PUT", "three parts: one multipart upload"],
)
async def test_a_blob_pulled_through_one_replica_is_one_object_served_by_another_without_upstream(
    hub: FakeRegistry,
    cluster: Cluster,
    bucket: Bucket,
    transfers: Transfers,
    size: int,
    parts: int | None,
) -> None:
    repo = f"team/stored-{size}"
    blob = cold_blob(hub, repo, seed=size, size=size)
    [first] = transfers.start(blob_url(cluster[0], repo, blob))
    await transfers.finish(within=WAIT)
    assert first.got(blob)

    head = await stored(bucket, blob)
    assert head["ContentLength"] == size
    # A multipart object's ETag is the hash of its parts' hashes, "-" and the part count.
    etag = str(head["ETag"]).strip('"')
    assert etag.partition("-")[2] == ("" if parts is None else str(parts)), etag
    asked = requests_about(hub, repo, blob.digest)

    [other] = transfers.start(blob_url(cluster[2], repo, blob))
    await transfers.finish(within=WAIT)
    assert other.got(blob)
    assert requests_about(hub, repo, blob.digest) == asked, "served from the bucket alone"


async def test_an_image_pulled_through_the_first_replica_is_pulled_from_the_third_without_upstream(
    hub: FakeRegistry, cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    repo = "team/app"
    image = make_image(layers=[random_layer(3 * MIB, seed=30), random_layer(9 * MIB, seed=31)])
    hub.push_image(repo, "1", image)
    first = await pull(http, cluster[0].url, repo, "1")
    asked = len(hub.requests)

    third = await pull(http, cluster[2].url, repo, "1")
    assert third == first
    assert len(hub.requests) == asked, hub.requests[asked:]


async def get_tag(http: aiohttp.ClientSession, replica: Replica, repo: str) -> bytes:
    async with http.get(f"{replica.url}/v2/{repo}/manifests/1", headers=ACCEPT) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.read()


async def make_stale(redis_url: str, repo: str) -> None:
    """Let the tag's freshness time pass: its records say the upstream last confirmed it
    longer than the tag ttl ago (as the clock of a test with an in-process mirror would)."""
    store = await RedisMetaStore.open(redis_url, KEY_PREFIX)
    try:
        aged = 0
        for key, record in await store.list_tags():
            if key.repo.endswith(repo):
                earlier = record.confirmed_at - TAG_TTL - 1
                await store.put_tag(key, dataclasses.replace(record, confirmed_at=earlier))
                aged += 1
        assert aged, f"no tag record of {repo}"
    finally:
        await store.close()


async def test_concurrent_pulls_of_a_tag_through_three_replicas_fetch_it_once_and_revalidate_once(
    hub: FakeRegistry, cluster: Cluster, redis: RedisServer, http: aiohttp.ClientSession
) -> None:
    repo = "team/tagged"
    image = make_image(seed=40)
    hub.push_image(repo, "1", image)

    async def everyone_pulls_the_tag() -> None:
        bodies = await asyncio.gather(
            *(get_tag(http, replica, repo) for replica in cluster for _ in range(10))
        )
        assert set(bodies) == {image.data}

    # The upstream takes its time, so that all thirty requests overlap the first one.
    manifests = f"/{repo}/manifests/"
    hub.add_fault(Fault("slow", path_contains=manifests, delay=0.5))
    await everyone_pulls_the_tag()
    # Resolving the tag (HEAD) and fetching what it names (GET by digest), once each.
    assert manifest_requests(hub, repo, "HEAD") == 1
    assert manifest_requests(hub, repo, "GET") == 1

    await make_stale(redis.url, repo)
    hub.add_fault(Fault("slow", path_contains=manifests, delay=0.5))
    await everyone_pulls_the_tag()
    assert manifest_requests(hub, repo, "HEAD") == 2, "one revalidation, cluster-wide"
    assert manifest_requests(hub, repo, "GET") == 1, "the tag still names the cached manifest"


async def test_cached_blobs_are_served_after_redis_restarts_empty(
    hub: FakeRegistry,
    start_cluster: StartCluster,
    tmp_path_factory: pytest.TempPathFactory,
    http: aiohttp.ClientSession,
) -> None:
    repo = "team/kept"
    image = make_image(layers=[random_layer(MIB, seed=50), random_layer(9 * MIB, seed=51)])
    hub.push_image(repo, "1", image)
    async with RedisServer(tmp_path_factory.mktemp("redis")) as redis:
        cluster, bucket = await start_cluster(redis)
        pulled = await pull(http, cluster[0].url, repo, "1")
        for blob in image.blobs:
            await stored(bucket, blob)

        await redis.stop()
        await redis.start()  # the same address, and nothing in it

        for replica in cluster:
            assert await pull(http, replica.url, repo, "1") == pulled
    assert [downloads(hub, blob.digest) for blob in image.blobs] == [1] * len(image.blobs)


# --- the replica-to-replica endpoint ------------------------------------------------------------


async def test_the_replica_endpoint_answers_404_to_anyone_without_the_cluster_secret(
    hub: FakeRegistry, cluster: Cluster, transfers: Transfers, http: aiohttp.ClientSession
) -> None:
    repo = "team/private"
    blob = cold_blob(hub, repo, seed=60, size=256 * 1024)
    [pulled] = transfers.start(blob_url(cluster[0], repo, blob))
    await transfers.finish(within=WAIT)
    assert pulled.got(blob)
    path = relay_path(Digest.parse(blob.digest))
    now = time.time()

    # A replica signs its request with the cluster secret, and gets the blob.
    signed = signed_headers(cluster.shared.secret, "GET", path, now)
    async with http.get(cluster[2].url + path, headers=signed) as resp:
        assert resp.status == 200
        assert await resp.read() == blob.data

    # Anyone else, even for a blob the replica holds, gets the 404 of no such endpoint.
    strangers = {
        "no signature": {},
        "another secret": signed_headers("not-the-secret", "GET", path, now),
        "another path": signed_headers(cluster.shared.secret, "GET", path + "0", now),
        "a bearer token": {"Authorization": f"Bearer {cluster.shared.secret}"},
    }
    for who, headers in strangers.items():
        for replica in cluster:
            async with http.get(replica.url + path, headers=headers) as resp:
                assert resp.status == 404, who
                assert resp.content_type == "application/json", who
                body = await resp.json()
                assert [e["code"] for e in body["errors"]] == ["NOT_FOUND"], (who, body)
    for replica in cluster:
        assert cluster.shared.secret not in replica.stderr, "the secret is never logged"
