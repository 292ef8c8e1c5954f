"""The server's prefetch schedule: the configured `prefetch` list at start and then every
`prefetch_interval` seconds, by one process of several (a metadata-store lock)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Sequence

from mirror.cache.access import AccessRecorder
from mirror.cache.prefetch.engine import Puller, prefetch_image
from mirror.cache.prefetch.text import summary_line
from mirror.config import Config
from mirror.meta.store import Locks
from mirror.platforms import parse_platform

log = logging.getLogger(__name__)


def schedule_lock(config: Config) -> str:
    """The lock one process of several takes to prefetch in an interval. It names the list,
    so a changed list is prefetched at once on restart rather than an interval later."""
    wanted = json.dumps([config.prefetch.prefetch, config.prefetch.prefetch_platforms])
    return "prefetch:" + hashlib.sha256(wanted.encode()).hexdigest()[:16]


async def schedule(config: Config, puller: Puller, locks: Locks, access: AccessRecorder) -> None:
    """Prefetch the configured list now and every `prefetch_interval` seconds, until
    cancelled. Of several processes sharing the metadata store, one does it per interval:
    it takes a lock that expires after the interval and does not release it."""
    if not config.prefetch.prefetch:
        return
    if config.freshness.offline:
        log.info("prefetch: not scheduled, the mirror is offline")
        return
    try:
        platforms = [parse_platform(p) for p in config.prefetch.prefetch_platforms]
    except ValueError as exc:
        log.error("prefetch: not scheduled: prefetch_platforms: %s", exc)
        return
    lock = schedule_lock(config)
    while True:
        try:
            if await locks.try_lock(lock, ttl=config.prefetch.prefetch_interval) is not None:
                await prefetch_all(puller, config.prefetch.prefetch, platforms)
                await access.flush()
            else:
                log.debug("prefetch: another process has this interval's round")
        except Exception:  # the schedule must survive anything one round does
            log.exception("prefetch: the scheduled round failed")
        await asyncio.sleep(config.prefetch.prefetch_interval)


async def prefetch_all(puller: Puller, images: Sequence[str], platforms: Sequence[str]) -> None:
    """One scheduled round: each image in turn, each outcome logged."""
    for text in images:
        result = await prefetch_image(puller, text, platforms)
        if result.ok:
            log.info("prefetch: %s", summary_line(result))
        else:
            log.warning("prefetch of %s failed: %s", text, result.error)
