"""Opening a data dir for a command: its content store and its metadata store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from mirror.config import Config
from mirror.meta import MetaStore, open_meta_store
from mirror.storage.filesystem import FilesystemStore


@dataclass(frozen=True)
class DataDir:
    config: Config
    store: FilesystemStore
    meta: MetaStore


@asynccontextmanager
async def open_data_dir(config: Config) -> AsyncIterator[DataDir]:
    """The store and metadata store of `config.data_dir` (temp files are left alone: a
    server may be writing them)."""
    store = FilesystemStore(config.data_dir)
    meta = await open_meta_store(
        redis_url=config.redis_url,
        key_prefix=config.redis_key_prefix,
        data_dir=config.data_dir,
        resilient=False,
    )
    try:
        yield DataDir(config, store, meta)
    finally:
        await meta.close()
