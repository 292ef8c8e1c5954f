"""Cached blobs are sent with sendfile when the store has them as local files, and chunk by
chunk when it does not (an object store): the same bytes either way, whole or in ranges."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import BinaryIO

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from mirror.reference import Digest
from mirror.server.responses import BlobSliceResponse
from mirror.storage import StoredBlob
from mirror.storage.filesystem import FileBlob

DATA = bytes(range(256)) * 4096


@dataclasses.dataclass(frozen=True)
class RemoteBlob:
    """A blob kept where sendfile cannot reach."""

    inner: FileBlob

    @property
    def digest(self) -> Digest:
        return self.inner.digest

    @property
    def size(self) -> int:
        return self.inner.size

    @property
    def local_path(self) -> Path | None:
        return None

    def open(self) -> BinaryIO:
        return self.inner.open()

    def chunks(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        return self.inner.chunks(start, end)


@pytest.mark.parametrize("local", [True, False], ids=["sendfile", "chunks"])
async def test_a_stored_blob_is_sent_whole_and_in_slices(
    aiohttp_client: AiohttpClient, tmp_path: Path, local: bool
) -> None:
    path = tmp_path / "blob"
    path.write_bytes(DATA)
    file_blob = FileBlob(Digest.parse("sha256:" + "a" * 64), len(DATA), path)
    blob: StoredBlob = file_blob if local else RemoteBlob(file_blob)

    async def handler(request: web.Request) -> web.StreamResponse:
        offset, count = int(request.query["offset"]), int(request.query["count"])
        return BlobSliceResponse(blob, offset, count, status=200, headers={})

    app = web.Application()
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)
    for offset, count in [(0, len(DATA)), (1000, 5000), (len(DATA) - 1, 1), (10, 0)]:
        resp = await client.get("/", params={"offset": offset, "count": count})
        assert resp.status == 200
        assert await resp.read() == DATA[offset : offset + count]
