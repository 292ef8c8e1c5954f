"""What the list cache (`mirror.upstream.lists`) holds, read straight from its store: the
embedded SQLite file in the data dir, or the Redis hash under the key prefix."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from mirror.upstream.lists import REDIS_NAME, SQLITE_FILE


async def kept_lists(settings: dict[str, Any], data_dir: Path) -> dict[str, bytes]:
    """Every kept entry, by key, as stored (JSON)."""
    if "redis_url" in settings:
        client = Redis.from_url(settings["redis_url"])
        try:
            name = f"{settings['redis_key_prefix']}{REDIS_NAME}:responses"
            raw = await client.hgetall(name)
        finally:
            await client.aclose()
        return {_text(key): _bytes(value) for key, value in raw.items()}
    path = data_dir / SQLITE_FILE
    if not path.exists():
        return {}
    with sqlite3.connect(path) as db:
        return {key: bytes(value) for key, value in db.execute("SELECT key, value FROM responses")}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
