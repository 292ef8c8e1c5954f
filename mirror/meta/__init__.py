"""The metadata store: Redis when configured (shared by many processes), else SQLite in the
data dir; either way behind `ResilientMetaStore`, so losing it never fails a request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from mirror.meta.redis import RedisMetaStore
from mirror.meta.resilient import ResilientMetaStore
from mirror.meta.sqlite import SqliteMetaStore
from mirror.meta.store import (
    Access,
    AccessRecords,
    Health,
    HostedContent,
    HostedManifest,
    Lease,
    Leases,
    Link,
    Links,
    Locks,
    MetaStore,
    MetaStoreError,
    RateLimit,
    RateLimits,
    Replica,
    Replicas,
    TagKey,
    TagRecord,
    TagRecords,
    Upload,
    Uploads,
)

__all__ = [
    "Access",
    "AccessRecords",
    "Health",
    "HostedContent",
    "HostedManifest",
    "Lease",
    "Leases",
    "Link",
    "Links",
    "Locks",
    "MetaStore",
    "MetaStoreError",
    "RateLimit",
    "RateLimits",
    "Replica",
    "Replicas",
    "TagKey",
    "TagRecord",
    "TagRecords",
    "Upload",
    "Uploads",
    "open_meta_store",
]

SQLITE_FILE = "meta.sqlite3"


async def open_meta_store(
    *,
    redis_url: str | None,
    key_prefix: str,
    data_dir: Path,
    resilient: bool = True,
    clock: Callable[[], float] = time.time,
) -> MetaStore:
    """The configured backend, opened and (for the server) wrapped. Raises MetaStoreError
    if it cannot be opened at all (Redis unreachable, the SQLite file unusable): a
    misconfiguration is reported at start rather than hidden behind neutral answers. A
    command on a data dir asks for the bare backend (`resilient=False`): it must fail
    loudly rather than, say, remove what it could not find records for. `clock` (unix time)
    times SQLite's expiries; Redis expires keys by its own clock."""
    inner: MetaStore
    if redis_url:
        inner = await RedisMetaStore.open(redis_url, key_prefix)
    else:
        await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
        inner = await SqliteMetaStore.open(data_dir / SQLITE_FILE, clock=clock)
    return ResilientMetaStore(inner) if resilient else inner
