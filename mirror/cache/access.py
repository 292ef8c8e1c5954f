"""Access records: when each blob and manifest was last used, and by which repositories.

Eviction and garbage collection need them, but a store write per request would put the
metadata store on the hot path; so accesses collect in memory and are written in batches
every few seconds (and at shutdown). Access records name repositories qualified
(`ghcr.io/org/app`), unique across upstreams; a repository is only ever touched after the
content was served to it, that is through a link (`mirror.cache.scope`), so no name a
client merely typed gets in. The catalog is read from the links, not from here. Pulls (tag
resolutions that worked) are counted per repository the same way, for the status page,
hosted ones among them (`hosted/local/app`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable

from mirror.meta.store import Access, AccessRecords
from mirror.upstream.hosting import HostedRepo
from mirror.upstream.routing import UpstreamRepo

log = logging.getLogger(__name__)

FLUSH_INTERVAL_SECONDS = 5.0


class AccessRecorder:
    def __init__(
        self,
        meta: AccessRecords,
        *,
        interval: float = FLUSH_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._meta = meta
        self._interval = interval
        self._clock = clock
        self._pending: dict[str, Access] = {}
        self._pulls: Counter[str] = Counter()  # qualified repository -> tag resolutions
        self._task: asyncio.Task[None] | None = None

    def touch(self, digest: str, repo: UpstreamRepo) -> None:
        """Note an access of content served to `repo` (so linked to it); costs a dict
        update, never I/O."""
        access = self._pending.get(digest)
        if access is None:
            access = self._pending[digest] = Access(last_access=self._clock())
        else:
            access.last_access = self._clock()
        access.repos.add(repo.qualified)

    def pulled(self, repo: UpstreamRepo | HostedRepo) -> None:
        """Count a pull of the repository (a client resolving one of its tags)."""
        self._pulls[repo.qualified] += 1

    async def flush(self) -> None:
        """Write what has collected since the last flush."""
        batch, self._pending = self._pending, {}
        pulls, self._pulls = self._pulls, Counter()
        if batch:
            await self._meta.record_access(batch)
        if pulls:
            await self._meta.record_pulls(pulls)

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
