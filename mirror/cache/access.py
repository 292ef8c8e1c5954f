"""Access records: when each blob and manifest was last used, and by which repositories.

Eviction and garbage collection need them, but a store write per request would put the
metadata store on the hot path; so accesses collect in memory and are written in batches
every few seconds (and at shutdown). Repositories seen in a batch join their upstream's
catalog; access records name them qualified (`ghcr.io/org/app`), unique across upstreams.
Pulls (tag resolutions) are counted per repository the same way, for the status page.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from mirror.meta.store import Access, AccessRecords, Catalog
from mirror.upstream.routing import UpstreamRepo

log = logging.getLogger(__name__)

FLUSH_INTERVAL_SECONDS = 5.0


class UseRecords(AccessRecords, Catalog, Protocol):
    """What the recorder writes: digests' accesses, pulls, and the repositories seen."""


class AccessRecorder:
    def __init__(
        self,
        meta: UseRecords,
        *,
        interval: float = FLUSH_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._meta = meta
        self._interval = interval
        self._clock = clock
        self._pending: dict[str, Access] = {}
        self._repos: set[tuple[str, str]] = set()  # (upstream host, repository) seen
        self._pulls: Counter[str] = Counter()  # qualified repository -> tag resolutions
        self._task: asyncio.Task[None] | None = None

    def touch(self, digest: str, repo: UpstreamRepo) -> None:
        """Note an access; costs a dict update, never I/O."""
        access = self._pending.get(digest)
        if access is None:
            access = self._pending[digest] = Access(last_access=self._clock())
        else:
            access.last_access = self._clock()
        access.repos.add(repo.qualified)
        self._repos.add((repo.upstream.host, repo.name))

    def pulled(self, repo: UpstreamRepo) -> None:
        """Count a pull of the repository (a client resolving one of its tags)."""
        self._pulls[repo.qualified] += 1

    async def flush(self) -> None:
        """Write what has collected since the last flush."""
        batch, self._pending = self._pending, {}
        repos, self._repos = self._repos, set()
        pulls, self._pulls = self._pulls, Counter()
        if batch:
            await self._meta.record_access(batch)
        if pulls:
            await self._meta.record_pulls(pulls)
        by_upstream: dict[str, list[str]] = {}
        for host, name in sorted(repos):
            by_upstream.setdefault(host, []).append(name)
        for host, names in by_upstream.items():
            await self._meta.add_repositories(host, names)

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
