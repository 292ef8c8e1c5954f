"""Where a download's bytes come from: the upstream, another replica's download of the same
blob (relayed as it arrives), or the shared store once another replica published it.

A download reads one source at a time (`ByteSource`), from the offset it has reached; a
source that stops short raises `SourceLost`, and the download asks its `Sources` for the
next one, which continues from the same offset. Whatever the source, the bytes are hashed
and verified by the download's writer before anything is committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from mirror import observe
from mirror.reference import Digest
from mirror.storage import ContentStore, StoredBlob
from mirror.upstream.client import BlobStream
from mirror.upstream.peers import Peers, RelayLost
from mirror.upstream.routing import UpstreamRepo


class SourceLost(Exception):
    """The source stopped before the blob's end (a relay cut off or stalled, a leader that
    gave up): the download continues from another one."""


class ByteSource(Protocol):
    """One way to the blob's bytes."""

    @property
    def relayed(self) -> bool:
        """Whether the bytes come from another replica rather than the upstream."""

    def open(self, offset: int) -> AbstractAsyncContextManager[BlobStream]:
        """The blob from `offset` on, or from an earlier `start` the caller skips to it."""


class Sources(Protocol):
    """The sources of one download, in the order they are needed."""

    async def first(self) -> ByteSource: ...

    async def after(self, lost: SourceLost) -> ByteSource:
        """The next source once `lost` stopped short; raises the download's failure when
        there is none."""

    async def close(self) -> None:
        """The download ended (committed or failed): let go of what was held for it."""


class UpstreamSource:
    """The upstream's blob, counted as received from it."""

    relayed = False

    def __init__(self, repo: UpstreamRepo, digest: Digest) -> None:
        self._repo = repo
        self._digest = digest

    @asynccontextmanager
    async def open(self, offset: int) -> AsyncIterator[BlobStream]:
        repo = self._repo
        upstream = repo.upstream
        async with upstream.open_blob(
            repo.name, self._digest, credential=repo.credential, offset=offset
        ) as stream:
            yield BlobStream(stream.size, _counted(upstream.host, stream.chunks), stream.start)


async def _counted(host: str, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        observe.upstream_received(host, len(chunk))
        yield chunk


class UpstreamOnly:
    """A download that is this host's alone to fetch (no cluster): the upstream."""

    def __init__(self, repo: UpstreamRepo, digest: Digest) -> None:
        self._source = UpstreamSource(repo, digest)

    async def first(self) -> ByteSource:
        observe.blob_joined("leader")
        return self._source

    async def after(self, lost: SourceLost) -> ByteSource:
        raise AssertionError("the upstream source is never lost") from lost

    async def close(self) -> None:
        pass


class RelaySource:
    """Another replica's download of the blob, from its replica-to-replica endpoint."""

    relayed = True

    def __init__(self, peers: Peers, url: str, digest: Digest) -> None:
        self._peers = peers
        self.url = url
        self._digest = digest

    @asynccontextmanager
    async def open(self, offset: int) -> AsyncIterator[BlobStream]:
        try:
            async with self._peers.open_blob(self.url, self._digest, offset) as stream:
                yield stream
        except RelayLost as exc:
            raise SourceLost(str(exc)) from None


class StoredSource:
    """The blob as the shared store will hold it once its leader (which no replica can
    reach) publishes it: waited for while the leader still holds its lease."""

    relayed = True

    def __init__(
        self,
        store: ContentStore,
        digest: Digest,
        leader_holds: Callable[[], Awaitable[bool]],
        poll: float,
    ) -> None:
        self._store = store
        self._digest = digest
        self._leader_holds = leader_holds
        self._poll = poll

    @asynccontextmanager
    async def open(self, offset: int) -> AsyncIterator[BlobStream]:
        while (blob := await self._published()) is None:
            if not await self._leader_holds():
                # It publishes before it lets go: look once more, since it may just have.
                if (blob := await self._published()) is None:
                    raise SourceLost(f"the leader of {self._digest} gave up before publishing")
                break
            await asyncio.sleep(self._poll)
        yield BlobStream(blob.size, blob.chunks(offset), offset)

    async def _published(self) -> StoredBlob | None:
        return await self._store.open_blob(self._digest)
