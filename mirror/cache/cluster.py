"""One download per blob across the replicas sharing a bucket and a Redis.

On each host the store's spool claim picks one process to download a blob (`downloads`);
that process then asks the cluster for the blob's lease (`Leases`, one per digest). The
holder *leads*: it fetches from the upstream, renewing the lease every third of its ttl, and
other replicas relay its bytes from its replica-to-replica endpoint as they arrive (or, when
it advertises no address, wait for the bucket to hold the blob). A relay that stops short
makes the replica read the lease again: a new holder is relayed from the offset reached, a
lease nobody holds is taken over (the download continues from the upstream at that offset),
and a holder that still holds it is retried, then waited for until its lease runs out.

The lease is for efficiency only: a lost or doubled lease costs a duplicate upstream
download, never a wrong byte, since every replica verifies what it received before it
commits or lets a client have the last byte. Each acquisition has a higher epoch, which
tells a new holder from a stale one that lost its lease while stalled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mirror import errors, observe
from mirror.cache.sources import (
    ByteSource,
    RelaySource,
    SourceLost,
    StoredSource,
    UpstreamSource,
)
from mirror.errors import RegistryError
from mirror.meta.store import Lease, Leases, Replica
from mirror.reference import Digest
from mirror.storage import ContentStore, StoreUnavailable
from mirror.upstream.peers import Peers
from mirror.upstream.routing import UpstreamRepo

log = logging.getLogger(__name__)

# A relay from a leader that still holds its lease is retried this many times before the
# replica waits for the lease to change hands.
RELAY_RETRIES = 2


async def _let_go() -> bool:
    """A leader that published and let go holds nothing to wait for."""
    return False


class LeaderLost(RegistryError):
    """The blob's leader holds its lease but serves nobody for far longer than the lease
    lasts: its clients may retry."""


@dataclass(frozen=True)
class Cluster:
    """This replica (`me`) among the others: the leases, the relay client (None without a
    cluster secret) and the lease's ttl."""

    leases: Leases
    me: Replica
    peers: Peers | None
    lease_ttl: float

    @property
    def poll(self) -> float:
        """How often a waiting replica looks at a lease or the bucket again."""
        return min(1.0, max(0.05, self.lease_ttl / 10))

    def sources(
        self,
        repo: UpstreamRepo,
        digest: Digest,
        store: ContentStore,
        on_fenced: Callable[[], None],
    ) -> ClusterSources:
        return ClusterSources(self, repo, digest, store, on_fenced)


class ClusterSources:
    """The `Sources` of one blob's download on the host that holds its spool claim.
    `on_fenced` is told when a lease this replica led under was lost: the download goes on
    (its bytes are verified all the same), but is relayed to nobody any more."""

    def __init__(
        self,
        cluster: Cluster,
        repo: UpstreamRepo,
        digest: Digest,
        store: ContentStore,
        on_fenced: Callable[[], None],
    ) -> None:
        self._cluster = cluster
        self._repo = repo
        self._digest = digest
        self._store = store
        self._on_fenced = on_fenced
        self._name = f"blob:{digest}"
        self._held: Lease | None = None  # the lease this replica leads under
        self._renewing: asyncio.Task[None] | None = None
        self._relayed: Lease | None = None  # the holding whose bytes are being relayed
        self._retries = 0

    async def first(self) -> ByteSource:
        return await self._choose(lost=None)

    async def after(self, lost: SourceLost) -> ByteSource:
        log.info("relaying %s stopped (%s): reading its lease again", self._digest, lost)
        return await self._choose(lost=lost)

    async def _choose(self, *, lost: SourceLost | None) -> ByteSource:
        cluster = self._cluster
        waited = 0.0
        while True:
            lease = await cluster.leases.acquire_lease(
                self._name, cluster.me.id, cluster.me.url, cluster.lease_ttl
            )
            if lease is not None:
                if lost is not None and await self._published():
                    # The leader published, then let go: nothing left to take over.
                    await cluster.leases.release_lease(self._name, lease)
                    return self._stored(_let_go)
                self._lead(lease)
                if lost is None:
                    observe.blob_joined("leader")
                else:
                    observe.lease_taken_over()
                    log.warning(
                        "took over the download of %s (lease epoch %d)", self._digest, lease.epoch
                    )
                return UpstreamSource(self._repo, self._digest)
            holder = await cluster.leases.lease_holder(self._name)
            if holder is None:
                continue  # released in between: try to take it again
            if lost is None or self._relayed is None or holder.epoch != self._relayed.epoch:
                if lost is None:
                    observe.blob_joined("remote_waiter")
                self._relayed, self._retries = holder, 0
                return self._source_of(holder)
            # The leader relayed from still holds the lease: alive, or not yet expired.
            if self._retries < RELAY_RETRIES:
                self._retries += 1
                await asyncio.sleep(cluster.poll)
                return self._source_of(holder)
            if waited > 3 * cluster.lease_ttl:
                raise LeaderLost(
                    errors.UPSTREAM_UNAVAILABLE,
                    f"the replica downloading {self._digest} stopped sending it",
                ) from lost
            await asyncio.sleep(cluster.poll)
            waited += cluster.poll

    def _source_of(self, holder: Lease) -> ByteSource:
        """The holder's relay; the bucket when it cannot be reached (no address, or this
        replica's own: a worker of it that died holding the lease)."""
        cluster = self._cluster
        if cluster.peers is None or holder.url is None or holder.url == cluster.me.url:

            async def leader_holds() -> bool:
                now = await cluster.leases.lease_holder(self._name)
                return now is not None and now.epoch == holder.epoch

            return self._stored(leader_holds)
        return RelaySource(cluster.peers, holder.url, self._digest)

    def _stored(self, leader_holds: Callable[[], Awaitable[bool]]) -> StoredSource:
        return StoredSource(self._store, self._digest, leader_holds, self._cluster.poll)

    async def _published(self) -> bool:
        """Whether the blob is in the store (a lookup that fails counts as not)."""
        try:
            return await self._store.blob_size(self._digest) is not None
        except StoreUnavailable:
            return False

    def _lead(self, lease: Lease) -> None:
        self._held = lease
        self._renewing = asyncio.create_task(self._renew(lease), name=f"lease {self._digest}")

    async def _renew(self, lease: Lease) -> None:
        cluster = self._cluster
        while True:
            await asyncio.sleep(cluster.lease_ttl / 3)
            if not await cluster.leases.renew_lease(self._name, lease, cluster.lease_ttl):
                log.warning(
                    "lost the lease on %s (epoch %d): finishing its download without "
                    "relaying it to other replicas",
                    self._digest,
                    lease.epoch,
                )
                self._held = None
                self._on_fenced()
                return

    async def close(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            await asyncio.gather(self._renewing, return_exceptions=True)
        if self._held is not None:
            lease, self._held = self._held, None
            await self._cluster.leases.release_lease(self._name, lease)
