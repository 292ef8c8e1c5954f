"""Access records: when each blob and manifest was last used, and by which repositories.

Eviction and garbage collection need them, but a store write per request would put the
metadata store on the hot path; so accesses collect in memory and are written in batches
every few seconds (and at shutdown). Repositories seen in a batch join the catalog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from mirror.meta.store import Access, MetaStore

log = logging.getLogger(__name__)

FLUSH_INTERVAL_SECONDS = 5.0


class AccessRecorder:
    def __init__(
        self,
        meta: MetaStore,
        upstream: str,
        *,
        interval: float = FLUSH_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._meta = meta
        self._upstream = upstream
        self._interval = interval
        self._clock = clock
        self._pending: dict[str, Access] = {}
        self._task: asyncio.Task[None] | None = None

    def touch(self, digest: str, repo: str) -> None:
        """Note an access; costs a dict update, never I/O."""
        access = self._pending.get(digest)
        if access is None:
            access = self._pending[digest] = Access(last_access=self._clock())
        else:
            access.last_access = self._clock()
        access.repos.add(repo)

    async def flush(self) -> None:
        """Write what has collected since the last flush."""
        batch, self._pending = self._pending, {}
        if not batch:
            return
        await self._meta.record_access(batch)
        repos = set().union(*(access.repos for access in batch.values()))
        await self._meta.add_repositories(self._upstream, sorted(repos))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="access-recorder")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception:  # never let one bad batch stop the recorder
                log.exception("writing access records failed")
