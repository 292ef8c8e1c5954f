"""One upstream download per blob across the replicas of a cluster, streamed live to every
client of every replica, and never a wrong byte completed or kept.

Each test pushes a cold blob of its own to the fake upstream, whose CDN serves the bytes; a
gate holds the upstream's answer at a chosen byte, so "while the download runs" is a fact the
test arranges, not a race it hopes to win.
"""

from __future__ import annotations

import aiohttp
import pytest

from testkit.cluster import Cluster
from testkit.fakeupstream import CHUNK_SIZE, FakeRegistry, Fault
from tests.cluster.blobs import MIB, WAIT, blob_url, cold_blob, committed, no_upload_left
from tests.cluster.evidence import JOINS, Bucket, Counters, downloads
from tests.transfers import Transfers

pytestmark = pytest.mark.asyncio(loop_scope="module")

CLIENTS_PER_REPLICA = 10


async def test_thirty_clients_on_three_replicas_share_one_download_and_all_stream_it_live(
    hub: FakeRegistry,
    cluster: Cluster,
    bucket: Bucket,
    transfers: Transfers,
    http: aiohttp.ClientSession,
) -> None:
    repo = "team/thirty"
    blob = cold_blob(hub, repo, seed=1)
    last_chunk = hub.hold_body(len(blob.data) - CHUNK_SIZE, path_contains=blob.digest)
    before = await Counters.read(http, cluster)

    per_replica = [transfers.start(blob_url(r, repo, blob), CLIENTS_PER_REPLICA) for r in cluster]
    everyone = [client for clients in per_replica for client in clients]
    # Every client, on every replica, has bytes while the upstream still holds back its
    # last chunk: nobody waits for the download to end.
    await transfers.first_bytes(everyone, within=WAIT)
    assert not last_chunk.released
    last_chunk.release()

    await transfers.finish(within=WAIT)
    assert [c for c in everyone if not c.got(blob)] == []
    assert downloads(hub, blob.digest) == 1, "thirty clients, three replicas, one download"
    after = await Counters.read(http, cluster)
    leads = after.since(before, JOINS, role="leader")
    assert sorted(leads) == [0, 0, 1], leads
    relayed = after.since(before, JOINS, role="remote_waiter")
    assert all(count > 0 for lead, count in zip(leads, relayed, strict=True) if not lead), relayed
    await committed(bucket, blob)


async def test_a_client_joining_on_another_replica_half_way_through_gets_the_whole_blob(
    hub: FakeRegistry, cluster: Cluster, bucket: Bucket, transfers: Transfers
) -> None:
    repo = "team/late"
    blob = cold_blob(hub, repo, seed=2)
    half_way = hub.hold_body(len(blob.data) // 2, path_contains=blob.digest)
    [early] = transfers.start(blob_url(cluster[0], repo, blob))
    await half_way.wait_reached(within=WAIT)

    [late] = transfers.start(blob_url(cluster[2], repo, blob))
    # It follows the download in flight (from its first byte), not one of its own.
    await transfers.first_bytes([late], within=WAIT)
    half_way.release()

    await transfers.finish(within=WAIT)
    assert early.got(blob) and late.got(blob), (early, late)
    assert late.received == len(blob.data)
    assert downloads(hub, blob.digest) == 1
    await committed(bucket, blob)


async def test_corrupted_upstream_bytes_complete_no_client_anywhere_and_leave_nothing_stored(
    hub: FakeRegistry, cluster: Cluster, bucket: Bucket, transfers: Transfers
) -> None:
    repo = "team/corrupt"
    blob = cold_blob(hub, repo, seed=3)
    hub.add_fault(Fault("corrupt", server="cdn", path_contains=blob.digest, times=None))
    for replica in cluster:
        transfers.start(blob_url(replica, repo, blob), 3)

    clients = await transfers.finish(within=WAIT)
    assert [c for c in clients if c.status == 200 and c.complete] == [], "no body completes"
    await no_upload_left(bucket, blob)
    assert await bucket.head(blob) is None


async def test_a_range_of_a_cold_blob_is_served_from_the_one_download(
    hub: FakeRegistry,
    cluster: Cluster,
    bucket: Bucket,
    transfers: Transfers,
    http: aiohttp.ClientSession,
) -> None:
    repo = "team/range"
    blob = cold_blob(hub, repo, seed=4)
    first, last = 9 * MIB + 5, 17 * MIB - 1  # across a part boundary of the upload
    headers = {"Range": f"bytes={first}-{last}"}
    async with http.get(blob_url(cluster[1], repo, blob), headers=headers) as resp:
        assert resp.status == 206, await resp.text()
        assert resp.headers["Content-Range"] == f"bytes {first}-{last}/{len(blob.data)}"
        assert await resp.read() == blob.data[first : last + 1]

    await committed(bucket, blob)
    [whole] = transfers.start(blob_url(cluster[2], repo, blob))
    await transfers.finish(within=WAIT)
    assert whole.got(blob)
    assert downloads(hub, blob.digest) == 1
