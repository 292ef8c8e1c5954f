"""The bytes of blob uploads in progress, on the filesystem: one file per session in the
data dir's `uploads/`, named by the session id, so every process sharing the data dir
continues it (a process on another host does not reach it: `holds` is False there).

A chunk is written at the recorded size, after cutting off whatever lies past it (a write
that died before its record), and fsynced before the caller records the new size.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, AsyncIterable
from pathlib import Path
from typing import BinaryIO

UPLOADS_DIR = "uploads"
_READ_SIZE = 1 << 20


class FileUploadSpool:
    """An `UploadSpool` in `<root>/uploads/`."""

    def __init__(self, root: Path) -> None:
        self._dir = root / UPLOADS_DIR

    def _path(self, upload_id: str) -> Path:
        return self._dir / upload_id

    async def create(self, upload_id: str) -> None:
        await asyncio.to_thread(self._create, upload_id)

    def _create(self, upload_id: str) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._path(upload_id).touch(exist_ok=False)

    async def holds(self, upload_id: str) -> bool:
        return self._path(upload_id).exists()

    async def append(self, upload_id: str, offset: int, chunks: AsyncIterable[bytes]) -> int:
        written = 0
        with await asyncio.to_thread(self._open_at, upload_id, offset) as file:
            async for chunk in chunks:
                await asyncio.to_thread(file.write, chunk)
                written += len(chunk)
            await asyncio.to_thread(_durable, file)
        return written

    def _open_at(self, upload_id: str, offset: int) -> BinaryIO:
        """The session's file for writing at `offset` (anything after it cut)."""
        file = self._path(upload_id).open("r+b")
        file.truncate(offset)
        file.seek(offset)
        return file

    async def read(self, upload_id: str, size: int) -> AsyncGenerator[bytes, None]:
        with await asyncio.to_thread(self._path(upload_id).open, "rb") as file:
            left = size
            while left > 0:
                chunk = await asyncio.to_thread(file.read, min(left, _READ_SIZE))
                if not chunk:
                    raise FileNotFoundError(f"{self._path(upload_id)} ended {left} bytes short")
                left -= len(chunk)
                yield chunk

    async def remove(self, upload_id: str) -> None:
        await asyncio.to_thread(self._path(upload_id).unlink, missing_ok=True)

    def idle(self, older_than: float) -> list[str]:
        if not self._dir.is_dir():
            return []
        found = []
        for path in self._dir.iterdir():
            try:
                if path.stat().st_mtime < older_than:
                    found.append(path.name)
            except FileNotFoundError:
                continue  # removed meanwhile
        return found


def _durable(file: BinaryIO) -> None:
    file.flush()
    os.fsync(file.fileno())
