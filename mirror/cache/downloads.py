"""Blob downloads: one per digest across the processes sharing a store, streamed to every
client while the bytes arrive.

A miss starts one `Download` (`mirror.cache.download`) per digest in this process, run as
its own task (so it finishes and fills the cache even if the client that started it goes
away). The store's `Spool` for the digest decides who fetches: the process holding its claim
*leads*, every other one *follows*. Across replicas, the process holding the claim asks its
`Sources` where the bytes come from: the upstream on a single host, and in a cluster the
upstream only for the replica holding the blob's lease (`cluster`); the others relay the
leader's bytes into their spool, so their own clients stream them exactly as they would the
upstream's.

A download this process leads that has lost all its readers is *abandoned*: it keeps going
(the next client gets it cached) while the abandoned ones fit the `AbandonBudget`, and is
cancelled beyond it, so a client cannot make the mirror fetch terabytes nobody reads. The
budget is this process's: each worker (and a `mirror prefetch`) has its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from mirror import heap, observe
from mirror.cache.cluster import Cluster
from mirror.cache.download import Download
from mirror.cache.sources import Sources, UpstreamOnly
from mirror.reference import Digest
from mirror.storage import ContentStore
from mirror.upstream.routing import UpstreamRepo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AbandonBudget:
    """How much reader-less downloading this process allows: at most `downloads` downloads
    with no reader left, and at most `bytes` still to fetch across them (a blob whose size
    the upstream did not announce counts against `downloads` only). From the settings
    `abandoned_downloads` and `abandoned_bytes`."""

    downloads: int
    bytes: int


class Downloads:
    """This process's downloads, at most one per digest, each run as its own task."""

    def __init__(
        self, store: ContentStore, budget: AbandonBudget, cluster: Cluster | None = None
    ) -> None:
        self._store = store
        self._budget = budget
        self._cluster = cluster
        self._running: dict[Digest, Download] = {}
        self._task_of: dict[Digest, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, digest: Digest) -> Download | None:
        """The download of `digest` running here, unless it is being cancelled."""
        download = self._running.get(digest)
        return None if download is None or download.cancelled else download

    async def settled(self, digest: Digest) -> None:
        """Wait until no cancelled download of `digest` is still giving up its claim, so a
        new one can take it."""
        while (download := self._running.get(digest)) is not None and download.cancelled:
            await asyncio.wait({self._task_of[digest]})

    def start(self, repo: UpstreamRepo, digest: Digest) -> Download:
        """Begin `digest`'s download here: led when this process gets the store's claim,
        else followed. The caller checked that none is running."""
        spool = self._store.spool(digest)
        download = Download(digest, spool, self._idle)
        leads = spool.claim()
        download.leads_for = repo if leads else None
        # Following another process's download costs the upstream nothing: coalesced too.
        observe.cache_lookup("blob", "miss" if leads else "coalesced")
        if not leads:
            observe.blob_joined("local_waiter")
        self._begin(download, self._run(download, repo, leads))
        return download

    def follow_elsewhere(self, digest: Digest) -> Download | None:
        """A download of `digest` following the one another process of this host leads,
        if one does (never starting one: for another replica's relay request)."""
        spool = self._store.spool(digest)
        if not spool.in_progress():
            return None
        download = Download(digest, spool, self._idle)
        self._begin(download, self._follow(download))
        return download

    def _begin(self, download: Download, work: Coroutine[Any, Any, None]) -> None:
        digest = download.digest
        self._running[digest] = download
        task = asyncio.create_task(work, name=f"download {digest}")
        self._task_of[digest] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _idle(self, download: Download) -> None:
        """Cancel `download` if it is abandoned and the abandoned ones would not fit the
        budget with it; a download within the budget keeps going (for the next client)."""
        if not download.abandoned:
            return
        abandoned = [d for d in self._running.values() if d.abandoned]
        budget = self._budget
        if (
            len(abandoned) <= budget.downloads
            and sum(d.remaining for d in abandoned) <= budget.bytes
        ):
            return
        log.info(
            "cancelling the download of %s: no client is reading it, and %d abandoned "
            "downloads exceed abandoned_downloads %d or abandoned_bytes %d",
            download.digest,
            len(abandoned),
            budget.downloads,
            budget.bytes,
        )
        download.cancelled = True
        observe.download_abandoned()
        self._task_of[download.digest].cancel()

    async def _run(self, download: Download, repo: UpstreamRepo, leads: bool) -> None:
        if not leads:
            await self._follow(download)
            return
        sources: Sources
        if self._cluster is None:
            sources = UpstreamOnly(repo, download.digest)
        else:
            sources = self._cluster.sources(repo, download.digest, self._store, download.fence)
        try:
            await download.lead(repo, self._store, sources)
        finally:
            self._forget(download)

    async def _follow(self, download: Download) -> None:
        try:
            await download.follow()
        finally:
            self._forget(download)

    def _forget(self, download: Download) -> None:
        if self._running.get(download.digest) is download:
            del self._running[download.digest]
            del self._task_of[download.digest]
        if not self._running:
            heap.give_back()  # what the downloads' buffers took (`mirror.heap`)

    async def close(self) -> None:
        """Abort every download (shutdown): readers are cut off, spools emptied."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
