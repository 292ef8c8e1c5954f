"""Blobs: served from the store when cached; otherwise downloaded once and streamed to
every client that asks meanwhile (`downloads`), or, on a nearly full disk or while the
store is unreachable (a bucket's outage), streamed from the upstream uncached
(`passthrough`).

Cached bytes, a download in flight in this process and one another process leads are all
served to a repository only when it holds the blob (`scope`: a link, or the upstream's
HEAD for it); a download this process leads for a repository links the blob to it as soon
as the upstream answers with the body."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from typing import Protocol

from mirror import errors, observe
from mirror.cache.access import AccessRecorder
from mirror.cache.cluster import Cluster
from mirror.cache.download import Download, DownloadLost, NoRoom, Reader, State
from mirror.cache.downloads import AbandonBudget, Downloads
from mirror.cache.passthrough import Passthrough
from mirror.cache.scope import RepositoryScope
from mirror.errors import RegistryError
from mirror.reference import Digest
from mirror.storage import ContentStore, StoredBlob, StoreUnavailable
from mirror.upstream.routing import UpstreamRepo

log = logging.getLogger(__name__)

# How often "streaming without caching" is logged while the disk stays nearly full.
PASSTHROUGH_LOG_SECONDS = 60.0
# After a lookup found the store unreachable: how long misses pass through without trying
# to store (the lookups themselves keep asking it, and find it back).
UNAVAILABLE_SECONDS = 5.0


class BlobBody(Protocol):
    """A blob body that is not (yet) in the store: what a miss is answered from."""

    @property
    def digest(self) -> Digest: ...

    @property
    def size(self) -> int | None: ...

    def read(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]: ...

    async def release(self) -> None:
        """Let go of anything held for a reader that never read (idempotent)."""


class BlobCache:
    """The blob side of the pull-through cache."""

    def __init__(
        self,
        store: ContentStore,
        access: AccessRecorder,
        abandon_budget: AbandonBudget,
        scope: RepositoryScope,
        *,
        offline: bool = False,
        min_free_space: int = 0,
        cluster: Cluster | None = None,
    ) -> None:
        self._store = store
        self._access = access
        self._scope = scope
        self._offline = offline
        self._min_free_space = min_free_space
        self._passthrough_logged = 0.0
        self._unavailable_until = 0.0  # time.monotonic() until which misses pass through
        self._unavailable_logged = 0.0
        self._downloads = Downloads(store, abandon_budget, cluster)

    async def cached(self, repo: UpstreamRepo, digest: Digest) -> StoredBlob | None:
        """The blob, if the store holds it and `repo` holds it (else 404 `BLOB_UNKNOWN`, or
        the upstream's failure: `RepositoryScope.check`). Blobs are stored once whichever
        repository or upstream they came from: a digest names the same bytes everywhere."""
        try:
            blob = await self._store.open_blob(digest)
        except StoreUnavailable as exc:
            self._store_failed(exc)
            return None
        if blob is None:
            return None
        await self._scope.check(repo, digest, "blob")
        observe.cache_lookup("blob", "hit")
        self._access.touch(str(digest), repo)
        return blob

    def cold(self, digest: Digest) -> bool:
        """Whether a GET of `digest` (not cached) would cost the upstream a transfer for
        this client alone: no download of it is running here with another reader."""
        download = self._downloads.get(digest)
        return download is None or download.readers == 0

    async def size(self, repo: UpstreamRepo, digest: Digest) -> int | None:
        """The blob's size without downloading it: from the cache or a download in flight
        (either only for a repository that holds it), or from an upstream HEAD."""
        try:
            size = await self._store.blob_size(digest)
        except StoreUnavailable as exc:
            self._store_failed(exc)
            size = None
        if size is not None:
            await self._scope.check(repo, digest, "blob")
            return size
        download = self._downloads.get(digest)
        if download is not None and download.state is not State.FAILED:
            await self._scope.check(repo, digest, "blob")
            with contextlib.suppress(DownloadLost):  # gone elsewhere or cancelled: ask upstream
                await download.wait_started()
                if download.size is not None:
                    observe.cache_lookup("blob", "coalesced")
                    return download.size
        self._refuse_when_offline()
        observe.cache_lookup("blob", "miss")
        return await repo.upstream.head_blob(repo.name, digest, credential=repo.credential)

    async def download(self, repo: UpstreamRepo, digest: Digest) -> BlobBody:
        """The download of `digest`, started (size known): joined if one is in flight in
        this process, followed if another process has it, else begun; or, when the disk is
        nearly full (or the blob is larger than the free space and `min_free_space` is
        set) or the store was just found unreachable, the upstream's body passed through
        uncached."""
        if self._downloads.get(digest) is None and (
            self._store_unavailable() or self._disk_nearly_full()
        ):
            self._refuse_when_offline()
            observe.cache_lookup("blob", "miss")
            return await self._pass_through(repo, digest)
        for attempt in range(2):
            reader = await self._join_or_start(repo, digest)
            try:
                await reader.download.wait_started()
            except BaseException as exc:
                reader.leave()  # a client gone while waiting may leave it abandoned
                if isinstance(exc, DownloadLost) and attempt == 0:
                    continue  # the other process gave up before any bytes: try ourselves
                if isinstance(exc, NoRoom) and self._min_free_space > 0:
                    return await self._pass_through(repo, digest)
                raise
            if reader.download.leads_for == repo:
                try:
                    await self._confirm(repo, reader.download)
                except BaseException:
                    reader.leave()
                    raise
            self._access.touch(str(digest), repo)
            return reader
        raise AssertionError("unreachable")

    async def _confirm(self, repo: UpstreamRepo, download: Download) -> None:
        """`repo` holds a blob this process downloads for it: the upstream says so by
        sending it (a link), else (relayed from another replica) `scope` must."""
        if download.from_upstream:
            await self._scope.link(repo, [download.digest])
        else:
            await self._scope.check(repo, download.digest, "blob")

    async def relay(self, digest: Digest) -> Reader | StoredBlob | None:
        """`digest` for another replica: a reader of its download on this host (this
        process's, unless it lost its lease; or another worker's, followed), else the
        stored blob, else None. Never a new download: the asking replica leads or waits."""
        download = self._downloads.get(digest)
        if download is None or download.state is State.FAILED:
            download = self._downloads.follow_elsewhere(digest)
        if download is not None and not download.fenced:
            reader = download.reader(relayed=True)
            try:
                await download.wait_started()
            except BaseException:
                reader.leave()
                raise
            return reader
        return await self._store.open_blob(digest)

    async def _pass_through(self, repo: UpstreamRepo, digest: Digest) -> Passthrough:
        observe.passed_through()
        passthrough = Passthrough(repo, digest)
        await passthrough.open()
        self._access.touch(str(digest), repo)
        return passthrough

    async def _join_or_start(self, repo: UpstreamRepo, digest: Digest) -> Reader:
        """A reader of a download of `digest` `repo` may read: one in flight here or one
        another process leads, only if `repo` holds the blob (checked before joining); one
        this process leads for `repo` itself, or a new one (the upstream's answer is the
        check)."""
        await self._downloads.settled(digest)  # a cancelled download's claim given up
        if (download := self._downloads.get(digest)) is not None:
            if download.leads_for != repo:
                await self._scope.check(repo, digest, "blob")
            observe.cache_lookup("blob", "coalesced")
            observe.blob_joined("local_waiter")
            return download.reader()
        self._refuse_when_offline()
        download = self._downloads.start(repo, digest)
        if download.leads_for != repo:
            await self._scope.check(repo, digest, "blob")
        return download.reader()

    def _store_failed(self, exc: StoreUnavailable) -> None:
        """A lookup found the store unreachable: misses pass through for a while."""
        now = time.monotonic()
        self._unavailable_until = now + UNAVAILABLE_SECONDS
        if now - self._unavailable_logged > PASSTHROUGH_LOG_SECONDS:
            self._unavailable_logged = now
            log.warning("%s; streaming misses without caching them", exc)

    def _store_unavailable(self) -> bool:
        return time.monotonic() < self._unavailable_until

    def _disk_nearly_full(self) -> bool:
        if self._min_free_space <= 0:
            return False
        free = self._store.free_bytes()
        if free >= self._min_free_space:
            return False
        if time.monotonic() - self._passthrough_logged > PASSTHROUGH_LOG_SECONDS:
            self._passthrough_logged = time.monotonic()
            log.warning(
                "only %d bytes free in %s (min_free_space %d): streaming misses without "
                "caching them",
                free,
                self._store.location,
                self._min_free_space,
            )
        return True

    def _refuse_when_offline(self) -> None:
        if self._offline:
            raise RegistryError(
                errors.BLOB_UNKNOWN, "blob not in the cache, and the mirror is offline"
            )

    async def close(self) -> None:
        """Abort every download (shutdown): readers are cut off, spools emptied."""
        await self._downloads.close()
