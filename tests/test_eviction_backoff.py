"""An evictor over its limit with nothing it may evict neither walks the store every second
nor logs every second: one warning when it gets stuck, the next walk when the cache has
grown or `RETRY_IDLE_SECONDS` have passed."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mirror.cache.eviction import RETRY_IDLE_SECONDS, Evictor
from mirror.meta import open_meta_store
from mirror.meta.store import MetaStore
from mirror.reference import Digest
from mirror.storage import ContentKind, StoredObject
from mirror.storage.filesystem import FilesystemStore
from testkit.clock import FakeClock

LIMIT = 10_000


class CountingStore(FilesystemStore):
    """A filesystem store that counts the walks of its trees."""

    walks = 0

    def objects(self, kind: ContentKind) -> Iterator[StoredObject]:
        self.walks += 1
        return super().objects(kind)


async def add_blob(store: FilesystemStore, data: bytes) -> Digest:
    digest = Digest("sha256", hashlib.sha256(data).hexdigest())
    writer = store.blob_writer(digest)
    await writer.write(data)
    await writer.commit(len(data))
    return digest


@pytest.fixture
async def meta(tmp_path: Path) -> AsyncIterator[MetaStore]:
    store = await open_meta_store(redis_url=None, key_prefix="mirror:", data_dir=tmp_path)
    yield store
    await store.close()


async def test_a_stuck_evictor_backs_off_and_warns_once(
    tmp_path: Path, meta: MetaStore, caplog: pytest.LogCaptureFixture
) -> None:
    store = CountingStore(tmp_path)
    await add_blob(store, b"x" * (LIMIT + 1))  # over the limit, and just used: not evictable
    clock = FakeClock()

    async def pinned() -> set[Digest]:
        return set()

    evictor = Evictor(store, meta, max_bytes=LIMIT, low_water=0.5, pinned=pinned, clock=clock)
    with caplog.at_level(logging.INFO, logger="mirror.cache.eviction"):
        for _ in range(30):  # thirty seconds of checks
            await evictor.tick()
            clock.advance(1)
        stuck = [r for r in caplog.records if "nothing can be evicted" in r.getMessage()]
        assert store.walks == 2, "one pass (blobs and manifests), then none"
        assert len(stuck) == 1 and stuck[0].levelno == logging.WARNING

        await add_blob(store, b"y" * (LIMIT // 100))  # grown by a percent of the limit
        await evictor.tick()
        assert store.walks == 4

        clock.advance(RETRY_IDLE_SECONDS)
        await evictor.tick()
        assert store.walks == 6, "recent content has aged: worth another pass"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("nothing can be evicted" in m for m in messages) == 1, "same state: no new line"
