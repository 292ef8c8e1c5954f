"""When the replica leading a download dies or stalls, the cluster carries on: a waiter on
another replica takes the lease over and fetches again (at most one extra upstream download
per failure), the other waiters continue from their own offsets through it, and neither the
dead leader's leftovers nor a stalled leader's late progress can spoil the stored blob.

The leader is whichever replica counted the download as its own
(`mirror_cluster_blob_joins_total{role="leader"}`); a gate holds the upstream's answer half
way, so the leader fails mid-download by arrangement.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from testkit.fakeupstream import FakeRegistry
from testkit.waiting import wait_until
from tests.cluster.blobs import WAIT, blob_url, cold_blob, committed, no_upload_left, stored
from tests.cluster.conftest import StartCluster
from tests.cluster.evidence import TAKEOVERS, Counters, downloads, leader_of
from tests.meta_fixtures import RedisServer
from tests.runcli import run_cli
from tests.transfers import Transfers

pytestmark = pytest.mark.asyncio(loop_scope="module")

CLIENTS_PER_REPLICA = 3
LEASE = "2"  # seconds: a pause past it is short


async def test_kill_9_of_the_leader_mid_download_leaves_its_waiters_to_a_new_leader(
    hub: FakeRegistry,
    redis: RedisServer,
    start_cluster: StartCluster,
    transfers: Transfers,
    http: aiohttp.ClientSession,
) -> None:
    cluster, bucket = await start_cluster(redis)
    repo = "team/killed"
    blob = cold_blob(hub, repo, seed=70)
    half_way = hub.hold_body(len(blob.data) // 2, path_contains=blob.digest)
    before = await Counters.read(http, cluster)
    clients = {
        r.port: transfers.start(blob_url(r, repo, blob), CLIENTS_PER_REPLICA) for r in cluster
    }
    await half_way.wait_reached(within=WAIT)
    await transfers.first_bytes(transfers.records, within=WAIT)

    leader = await leader_of(http, cluster, before)
    await leader.kill()
    half_way.release()  # to nobody: the leader is gone

    await transfers.finish(within=WAIT)
    waiters = [c for r in cluster if r is not leader for c in clients[r.port]]
    # Each waiter got the blob through the new leader, or failed cleanly: never a wrong body.
    assert [w for w in waiters if not w.got_no_wrong_body(blob)] == []
    assert [c for c in clients[leader.port] if c.complete] == [], "the dead leader's clients"
    assert downloads(hub, blob.digest) <= 2

    # Whatever the waiters did, the survivors now serve the blob, and it is whole in the bucket.
    survivor = next(r for r in cluster if r is not leader)
    [again] = transfers.start(blob_url(survivor, repo, blob))
    await transfers.finish(within=WAIT)
    assert again.got(blob)
    assert downloads(hub, blob.digest) <= 2
    await stored(bucket, blob)

    # The dead leader's unfinished multipart upload is found and aborted.
    gc = await asyncio.to_thread(
        run_cli,
        *("gc", *cluster.shared.args(), "--data-dir", str(cluster.workdir / "gc")),
        env={**cluster.shared.env(), **cluster.extra_env, "MIRROR_GC_GRACE": "0"},
        cwd=cluster.workdir,
    )
    assert gc.returncode == 0, gc.stderr
    await no_upload_left(bucket, blob)


async def test_a_leader_paused_past_its_lease_is_replaced_and_its_late_progress_spoils_nothing(
    hub: FakeRegistry,
    redis: RedisServer,
    start_cluster: StartCluster,
    transfers: Transfers,
    http: aiohttp.ClientSession,
) -> None:
    cluster, bucket = await start_cluster(redis, extra_env={"MIRROR_CLUSTER_LEASE": LEASE})
    repo = "team/paused"
    blob = cold_blob(hub, repo, seed=71)
    half_way = hub.hold_body(len(blob.data) // 2, path_contains=blob.digest)
    before = await Counters.read(http, cluster)
    clients = {
        r.port: transfers.start(blob_url(r, repo, blob), CLIENTS_PER_REPLICA) for r in cluster
    }
    await half_way.wait_reached(within=WAIT)
    await transfers.first_bytes(transfers.records, within=WAIT)

    leader = await leader_of(http, cluster, before)
    leader.pause()
    # Its lease runs out; a waiter elsewhere takes it over and downloads again, and every
    # client of the other replicas gets the blob from the new leader.
    await wait_until(
        lambda: downloads(hub, blob.digest) == 2,
        within=WAIT,
        message="a second download, by the replica that took the lease over",
    )
    waiters = [c for r in cluster if r is not leader for c in clients[r.port]]
    async with asyncio.timeout(WAIT):
        await asyncio.gather(*(w.ended.wait() for w in waiters))
    assert [w for w in waiters if not w.got(blob)] == []

    # The old leader wakes up and its download goes on: whatever it does with it, the
    # stored blob stays the one intact object, and its own clients get no wrong body.
    leader.resume()
    half_way.release()
    await transfers.finish(within=WAIT)
    assert [c for c in clients[leader.port] if not c.got_no_wrong_body(blob)] == []
    assert downloads(hub, blob.digest) == 2
    await committed(bucket, blob)
    after = await Counters.read(http, cluster)
    assert sum(after.since(before, TAKEOVERS)) >= 1
