"""Aborting the multipart uploads that crashed writers left in the bucket, while serving.

A replica killed mid-download leaves its upload pending: invisible (nothing is published
before `CompleteMultipartUpload`), but its parts take space in the bucket. A start aborts
old ones and so does `mirror gc`, but a replica that never comes back, in a cluster nobody
runs gc on, needs someone else to: every serving replica on S3 runs a janitor, and one pass
at a time runs cluster-wide (a metadata-store lock). With the metadata store unreachable each
replica sweeps on its own until it returns (an upload aborted twice is aborted once).

An upload lasts as long as its download, so only those older than `s3_orphan_grace` are
taken for orphans: a younger one may belong to a download still running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from mirror.meta.store import Locks
from mirror.storage import TempFile

log = logging.getLogger(__name__)

# Between passes: half the grace (an orphan waits at most 1.5 graces), at most this.
MAX_INTERVAL_SECONDS = 600.0
LOCK = "s3-janitor"  # held by the replica whose pass runs
_LOCK_TTL = 600.0


class Uploads(Protocol):
    """What the janitor uses of the S3 store."""

    def orphaned_uploads(self, older_than: float) -> list[TempFile]: ...

    def remove_temp_file(self, temp: TempFile) -> None: ...


class Janitor:
    def __init__(
        self,
        uploads: Uploads,
        locks: Locks,
        *,
        grace: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._uploads = uploads
        self._locks = locks
        self._grace = grace
        self._clock = clock  # unix time, compared with the bucket's upload times
        self.interval = min(grace / 2, MAX_INTERVAL_SECONDS)

    async def sweep(self) -> int | None:
        """One pass: how many orphaned uploads it aborted, or None when another replica's
        pass holds the lock."""
        token = await self._locks.try_lock(LOCK, _LOCK_TTL)
        if token is None:
            return None
        try:
            return await asyncio.to_thread(self._abort_orphans)
        finally:
            await self._locks.unlock(LOCK, token)

    def _abort_orphans(self) -> int:
        orphans = self._uploads.orphaned_uploads(self._clock() - self._grace)
        for orphan in orphans:
            self._uploads.remove_temp_file(orphan)
        return len(orphans)

    async def run_forever(self) -> None:
        while True:
            try:
                aborted = await self.sweep()
            except Exception as exc:  # the bucket unreachable, say: try again next time
                log.warning("aborting orphaned uploads failed: %s", exc)
            else:
                if aborted:
                    log.info("aborted %d orphaned multipart uploads in the bucket", aborted)
            await asyncio.sleep(self.interval)
