"""Keeping the cache under `max_cache_size`: least recently used content goes first.

When the cache holds more than the limit, objects are evicted, oldest use first, until it
holds `cache_low_water` of it. Use is the later of an object's last access record and its
file's time. Never evicted: pinned content (the `prefetch` images), and anything used in
the last `RECENT_SECONDS` (being read or written right now, or about to be). Evicting a
manifest drops the tag records that name it, so the next pull asks the upstream again;
evicting a blob that a cached manifest still names is allowed (it is fetched again when
pulled) and counted.

Eviction runs in the background, in one process at a time (a metadata-store lock), and
never blocks a request: removing a file a client is reading leaves that client's copy
readable until it is done. A pass that could free nothing (everything pinned or recent) is
not repeated every second: the next waits until the cache has grown by a percent of its
limit or `RETRY_IDLE_SECONDS` have passed. Warnings are logged when the state changes (over
the limit and stuck, still over after a pass, the metadata store failing), not every pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from mirror import observe
from mirror.cache.references import named_blobs
from mirror.meta.store import (
    AccessRecords,
    Health,
    Links,
    Locks,
    MetaStoreError,
    TagKey,
    TagRecord,
    TagRecords,
)
from mirror.reference import Digest
from mirror.storage import ContentStore, StoredObject

log = logging.getLogger(__name__)

# Content used this recently is never evicted: a pull in progress touches it.
RECENT_SECONDS = 60.0
# The size check is an in-memory comparison: cheap enough to make often.
CHECK_INTERVAL_SECONDS = 1.0
# After a pass that freed nothing: when to walk the store again (recent content has aged).
RETRY_IDLE_SECONDS = RECENT_SECONDS
_LOCK = "evict"
_LOCK_TTL = 600.0


class EvictionRecords(Health, Locks, AccessRecords, TagRecords, Links, Protocol):
    """What eviction uses of the metadata store: its lock, what was used when, the tags that
    name a manifest, the links of what it removes, and whether the store answered
    throughout."""


@dataclass
class Eviction:
    """What one eviction pass did."""

    objects: int = 0
    bytes: int = 0
    referenced_blobs: int = 0
    tag_records: int = 0
    left_bytes: int = 0  # the cache's size afterwards


class Evictor:
    def __init__(
        self,
        store: ContentStore,
        meta: EvictionRecords,
        *,
        max_bytes: int,
        low_water: float,
        pinned: Callable[[], Awaitable[set[Digest]]],
        before_pass: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._meta = meta
        self._max_bytes = max_bytes
        self._target = int(max_bytes * low_water)
        self._pinned = pinned
        self._before_pass = before_pass
        self._clock = clock
        self._state = "ok"  # what was last logged: ok, stuck, short, meta
        self._fruitless: tuple[int, float] | None = None  # (usage, time) of a pass freeing none

    def _used(self) -> int:
        usage = self._store.usage
        return usage["blob"].bytes + usage["manifest"].bytes

    def over_limit(self) -> bool:
        return self._max_bytes > 0 and self._used() > self._max_bytes

    async def run_forever(self, interval: float = CHECK_INTERVAL_SECONDS) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(interval)

    async def tick(self) -> None:
        """One check: a pass when over the limit, unless the last pass freed nothing and
        nothing has changed enough since."""
        if not self.over_limit() or not self._worth_a_pass():
            return
        try:
            result = await self.evict()
        except Exception:  # keep evicting later; a bad pass must not stop it
            log.exception("eviction failed")
            result = Eviction()
        freed = result is None or result.objects > 0  # None: another process's turn
        self._fruitless = None if freed else (self._used(), self._clock())

    def _worth_a_pass(self) -> bool:
        if self._fruitless is None:
            return True
        used, at = self._fruitless
        grown = self._used() - used >= self._max_bytes // 100
        return grown or self._clock() - at >= RETRY_IDLE_SECONDS

    def _note(self, state: str, level: int, message: str, *args: object) -> None:
        """Log `message` when eviction's state changes to `state`, not on every pass."""
        if state != self._state:
            log.log(level, message, *args)
        self._state = state

    async def evict(self) -> Eviction | None:
        """One pass; None when another process holds the eviction lock."""
        token = await self._meta.try_lock(_LOCK, _LOCK_TTL)
        if token is None:
            return None
        try:
            return await self._evict()
        finally:
            await self._meta.unlock(_LOCK, token)

    async def _evict(self) -> Eviction:
        if self._before_pass is not None:
            await self._before_pass()  # e.g. write this process's latest accesses
        store = self._store
        objects = await asyncio.to_thread(
            lambda: [*store.objects("manifest"), *store.objects("blob")]
        )
        total = sum(o.size for o in objects)
        result = Eviction(left_bytes=total)
        if self._max_bytes <= 0 or total <= self._max_bytes:
            self._note("ok", logging.INFO, "the cache is under its limit again")
            return result
        ranked = await self._candidates(objects)
        if ranked is None:
            return result
        candidates, tags = ranked
        still_named = await named_blobs(store, (o.digest for o in objects if o.kind == "manifest"))
        evicted: list[str] = []
        for obj in candidates:
            if total <= self._target:
                break
            freed = await asyncio.to_thread(store.remove, obj.kind, obj.digest)
            if not freed:
                continue
            total -= freed
            evicted.append(str(obj.digest))
            await self._count(result, obj, freed, obj.digest in still_named, tags)
        result.left_bytes = total
        if result.objects:
            log.info(
                "evicted %d objects (%d bytes, %d blobs a cached manifest still names); the "
                "cache holds %d bytes of at most %d",
                result.objects,
                result.bytes,
                result.referenced_blobs,
                total,
                self._max_bytes,
            )
        self._note_outcome(result, total)
        await self._meta.delete_accesses(evicted)
        await self._meta.remove_links(evicted)
        return result

    def _note_outcome(self, result: Eviction, total: int) -> None:
        if total <= self._max_bytes:
            self._note("ok", logging.INFO, "the cache is under its limit again")
        elif result.objects == 0:
            self._note(
                "stuck",
                logging.WARNING,
                "the cache holds %d bytes, over its limit of %d, and nothing can be evicted "
                "(all of it pinned or used in the last %g s)",
                total,
                self._max_bytes,
                RECENT_SECONDS,
            )
        else:
            self._note(
                "short",
                logging.WARNING,
                "the cache still holds %d bytes after evicting, over its limit of %d (the rest "
                "is pinned or recent)",
                total,
                self._max_bytes,
            )

    async def _candidates(
        self, objects: list[StoredObject]
    ) -> tuple[list[StoredObject], list[tuple[TagKey, TagRecord]]] | None:
        """What may go, least recently used first (never pinned content, nor anything used
        within RECENT_SECONDS), with the tag records to drop along with their manifests; None
        while the metadata store fails: without it nothing says what is pinned or recent."""
        try:
            await self._meta.ping()
        except MetaStoreError as exc:
            self._note(
                "meta", logging.WARNING, "not evicting while the metadata store fails: %s", exc
            )
            return None
        accessed = await self._meta.list_accesses()
        pinned = await self._pinned()
        tags = await self._meta.list_tags()
        if not self._meta.available:
            self._note("meta", logging.WARNING, "not evicting: the metadata store failed in a pass")
            return None
        now = self._clock()

        def last_used(obj: StoredObject) -> float:
            return max(obj.mtime, accessed.get(str(obj.digest), 0.0))

        candidates = sorted(
            (o for o in objects if o.digest not in pinned and now - last_used(o) >= RECENT_SECONDS),
            key=last_used,
        )
        return candidates, tags

    async def _count(
        self,
        result: Eviction,
        obj: StoredObject,
        freed: int,
        named: bool,
        tags: list[tuple[TagKey, TagRecord]],
    ) -> None:
        """Account for one removed object; an evicted manifest takes its tag records along."""
        result.objects += 1
        result.bytes += freed
        referenced = obj.kind == "blob" and named
        observe.evicted(obj.kind, freed, referenced=referenced)
        if obj.kind == "manifest":
            for key, record in tags:
                if record.digest == obj.digest:
                    await self._meta.delete_tag(key)
                    result.tag_records += 1
        elif referenced:
            result.referenced_blobs += 1
