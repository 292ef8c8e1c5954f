"""The bytes of blob uploads in progress, in the bucket: every replica naming it continues
any upload, whichever replica took its earlier chunks.

Each chunk a session receives (a `PATCH` body, or the closing `PUT`'s) is an object of its
own, `uploads/<id>/<offset>` under the store's prefix, the offset zero-padded so the keys
list in byte order. A chunk is streamed to the bucket as it arrives: one `PutObject` when it
ends within a part, else a multipart upload fed part by part (memory: one part), completed
when the chunk ends and aborted when it fails, so a chunk object is always whole. A chunk
rewritten at the same offset (a retry after a write that died before its record) replaces
the earlier object. Reading follows the chain from offset 0, each chunk starting where the
one before ended, up to the recorded size; objects off that chain (leftovers past the
recorded size) are ignored, and go with the session.

The janitor (`mirror.cache.janitor`) treats a chunk's multipart upload like a download's:
it lasts as long as its request, so one older than `s3_orphan_grace` is an orphan. Chunk
objects themselves are not content (`objects` lists only `blobs/` and `manifests/`); the
sessions' sweep removes those of expired sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterator
from typing import Any

from botocore.exceptions import ClientError

from mirror.storage.s3client import MAX_PARTS, MIN_PART_SIZE, S3Location
from mirror.storage.s3writer import BLOB_CONTENT_TYPE, is_missing, outage_as_unavailable

TREE = "uploads"
_OFFSET_DIGITS = 20  # any 64-bit offset
_READ_SIZE = 1 << 20


class S3UploadSpool:
    """An `UploadSpool` under `<prefix>/uploads/`: `client` gives the aiobotocore client
    (requests), `blocking` is the botocore one (housekeeping)."""

    def __init__(
        self, location: S3Location, client: Callable[[], Awaitable[Any]], blocking: Any
    ) -> None:
        self._where = location
        self._client = client
        self._blocking = blocking

    def _session(self, upload_id: str) -> str:
        return self._where.key(TREE, upload_id, "")

    def _chunk_key(self, upload_id: str, offset: int) -> str:
        return self._session(upload_id) + f"{offset:0{_OFFSET_DIGITS}d}"

    async def create(self, upload_id: str) -> None:
        """Nothing to make: a session's first chunk is its first object."""

    async def holds(self, upload_id: str) -> bool:
        """Always: the bucket is every replica's."""
        return True

    async def append(self, upload_id: str, offset: int, chunks: AsyncIterable[bytes]) -> int:
        key = self._chunk_key(upload_id, offset)
        with outage_as_unavailable(self._where.describe()):
            client = await self._client()
            buffer = bytearray()
            multipart: _Multipart | None = None
            written = 0
            try:
                async for data in chunks:
                    buffer += data
                    written += len(data)
                    if len(buffer) >= MIN_PART_SIZE:
                        if multipart is None:
                            multipart = await _Multipart.start(client, self._where.bucket, key)
                        await multipart.send(bytes(buffer))
                        buffer.clear()
                if multipart is not None:
                    if buffer:
                        await multipart.send(bytes(buffer))
                    await multipart.complete()
                elif written:
                    await client.put_object(
                        Bucket=self._where.bucket,
                        Key=key,
                        Body=bytes(buffer),
                        ContentType=BLOB_CONTENT_TYPE,
                    )
            except BaseException:
                if multipart is not None:
                    await asyncio.shield(multipart.abort())
                raise
        return written

    async def read(self, upload_id: str, size: int) -> AsyncGenerator[bytes, None]:
        with outage_as_unavailable(self._where.describe()):
            client = await self._client()
            chunks = await self._chunks(client, upload_id)
            offset = 0
            while offset < size:
                length = chunks.get(offset)
                if length is None or offset + length > size:
                    raise FileNotFoundError(
                        f"upload {upload_id} has no chunk at {offset} of {size} bytes"
                    )
                try:
                    answer = await client.get_object(
                        Bucket=self._where.bucket, Key=self._chunk_key(upload_id, offset)
                    )
                except ClientError as exc:
                    if is_missing(exc):
                        raise FileNotFoundError(
                            f"upload {upload_id} lost its chunk at {offset}"
                        ) from None
                    raise
                async with answer["Body"] as body:
                    got = 0
                    while data := await body.read(_READ_SIZE):
                        got += len(data)
                        yield data
                if got != length:
                    raise FileNotFoundError(f"upload {upload_id}'s chunk at {offset} changed")
                offset += length

    async def _chunks(self, client: Any, upload_id: str) -> dict[int, int]:
        """The session's chunk objects: their sizes by offset."""
        prefix = self._session(upload_id)
        found: dict[int, int] = {}
        pages = client.get_paginator("list_objects_v2")
        async for page in pages.paginate(Bucket=self._where.bucket, Prefix=prefix):
            for item in page.get("Contents", ()):
                name = item["Key"][len(prefix) :]
                if name.isdigit():
                    found[int(name)] = int(item["Size"])
        return found

    async def remove(self, upload_id: str) -> None:
        with outage_as_unavailable(self._where.describe()):
            client = await self._client()
            for offset in await self._chunks(client, upload_id):
                await client.delete_object(
                    Bucket=self._where.bucket, Key=self._chunk_key(upload_id, offset)
                )

    def idle(self, older_than: float) -> list[str]:
        last_written: dict[str, float] = {}
        for item in self._list():
            upload_id = item["Key"][len(self._where.key(TREE, "")) :].partition("/")[0]
            written = item["LastModified"].timestamp()
            last_written[upload_id] = max(written, last_written.get(upload_id, written))
        return [upload_id for upload_id, at in last_written.items() if at < older_than]

    def _list(self) -> Iterator[dict[str, Any]]:
        pages = self._blocking.get_paginator("list_objects_v2")
        with outage_as_unavailable(self._where.describe()):
            for page in pages.paginate(Bucket=self._where.bucket, Prefix=self._where.key(TREE, "")):
                yield from page.get("Contents", ())


class _Multipart:
    """One chunk's multipart upload, sent a part at a time."""

    def __init__(self, client: Any, bucket: str, key: str, upload_id: str) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self._upload_id = upload_id
        self._parts: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, client: Any, bucket: str, key: str) -> _Multipart:
        created = await client.create_multipart_upload(
            Bucket=bucket, Key=key, ContentType=BLOB_CONTENT_TYPE
        )
        return cls(client, bucket, key, created["UploadId"])

    async def send(self, part: bytes) -> None:
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise OSError(f"a chunk of more than {MAX_PARTS} parts does not fit one object")
        answer = await self._client.upload_part(
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=part,
        )
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    async def complete(self) -> None:
        await self._client.complete_multipart_upload(
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )

    async def abort(self) -> None:
        """Best effort, as the chunk's own failure is what the caller hears of: an upload
        left pending is the janitor's."""
        with contextlib.suppress(Exception):
            await self._client.abort_multipart_upload(
                Bucket=self._bucket, Key=self._key, UploadId=self._upload_id
            )
