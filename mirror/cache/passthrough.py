"""A blob miss streamed from the upstream to one client without being cached (the data dir
is nearly full). Verified all the same: the last chunk is held back until the digest (and
size) match, so a client never completes a transfer of bad bytes."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack

from mirror import errors, observe
from mirror.reference import Digest
from mirror.upstream.client import UpstreamError
from mirror.upstream.routing import UpstreamRepo


class Passthrough:
    """The upstream's body of one blob, for one reader."""

    def __init__(self, repo: UpstreamRepo, digest: Digest) -> None:
        self.digest = digest
        self.size: int | None = None
        self._repo = repo
        self._stack = AsyncExitStack()

    async def open(self) -> None:
        stream = await self._stack.enter_async_context(
            self._repo.upstream.open_blob(
                self._repo.name, self.digest, credential=self._repo.credential
            )
        )
        self.size = stream.size
        self._stream = stream

    async def release(self) -> None:
        await self._stack.aclose()

    async def read(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        """Bytes [start, end) of the blob; the whole blob is read (and hashed) regardless."""
        upstream = self._repo.upstream
        hasher = hashlib.new(self.digest.algorithm)
        position, received = 0, 0
        held: bytes = b""
        try:
            async for chunk in self._stream.chunks:
                hasher.update(chunk)
                received += len(chunk)
                observe.upstream_received(upstream.host, len(chunk))
                if held:
                    if piece := _slice(held, position, start, end):
                        yield piece
                    position += len(held)
                held = chunk
            if hasher.hexdigest() != self.digest.hex or (
                self.size is not None and received != self.size
            ):
                error = UpstreamError(
                    errors.UPSTREAM_BAD_GATEWAY,
                    f"upstream {upstream.name} sent bytes that do not match {self.digest}",
                )
                observe.upstream_failed(upstream.host, str(error))
                raise error
            if piece := _slice(held, position, start, end):
                yield piece
        finally:
            await self.release()


def _slice(chunk: bytes, position: int, start: int, end: int | None) -> bytes:
    """The part of `chunk` (which begins at `position` in the blob) inside [start, end)."""
    low = max(start - position, 0)
    high = len(chunk) if end is None else min(end - position, len(chunk))
    return chunk[low:high] if high > low else b""
