"""A download's upload to S3 while the bytes arrive: the spool writer of a blob larger than
one part sends each part as soon as it is written, so its commit (which the clients' last
bytes wait for) costs only the last part and `CompleteMultipartUpload`, not the whole blob.

The parts are the very bytes written to the spool, hashed again as they are sent; the upload
is completed only when that hash and size match the digest verified on the spool, and is
aborted otherwise. If a part fails to go (the bucket briefly unreachable), the commit falls
back to uploading the verified spool file whole (`Uploader.upload`). One part is sent while
the next fills, so memory is two parts per download, and a bucket slower than the upstream
slows the download down to its pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from mirror.reference import Digest
from mirror.storage.protocol import IntegrityError
from mirror.storage.s3writer import BLOB_CONTENT_TYPE, Uploader, is_taken

log = logging.getLogger(__name__)


class StreamingUpload:
    """The multipart upload of one blob under `key`, fed part by part (at most one part in
    flight while the next is buffered)."""

    def __init__(
        self,
        client: Callable[[], Awaitable[Any]],
        bucket: str,
        key: str,
        part_size: int,
    ) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self._part_size = part_size
        self._buffer = bytearray()
        self._hash = hashlib.sha256()
        self._sent = 0
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._inflight: asyncio.Task[None] | None = None
        self.failed: BaseException | None = None  # a part that did not go: fall back

    async def feed(self, chunk: bytes) -> None:
        """Buffer `chunk`; send a part once one is full (after the previous one went)."""
        if self.failed is not None:
            return
        self._buffer += chunk
        while len(self._buffer) >= self._part_size and self.failed is None:
            with memoryview(self._buffer) as view:
                part = bytes(view[: self._part_size])
            del self._buffer[: self._part_size]
            await self._settle()
            if self.failed is None:
                self._inflight = asyncio.create_task(self._send(part))

    async def _settle(self) -> None:
        """Wait for the part in flight; a failure is kept in `failed`."""
        task, self._inflight = self._inflight, None
        if task is None:
            return
        try:
            await task
        except Exception as exc:  # the commit falls back to a whole upload
            log.warning(
                "upload of a part of %s failed (%s): retried whole at commit", self._key, exc
            )
            self.failed = exc

    async def _send(self, part: bytes) -> None:
        client = await self._client()
        if self._upload_id is None:
            created = await client.create_multipart_upload(
                Bucket=self._bucket, Key=self._key, ContentType=BLOB_CONTENT_TYPE
            )
            self._upload_id = created["UploadId"]
        number = len(self._parts) + 1
        answer = await client.upload_part(
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=part,
        )
        await asyncio.to_thread(self._hash.update, part)  # off the event loop
        self._sent += len(part)
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    async def complete(self, digest: Digest, size: int) -> bool | None:
        """Send the last part and complete, if what was sent is the verified blob: whether
        the object is new, or None when a part failed (upload aborted: the caller uploads
        the file whole). IntegrityError (upload aborted) when the bytes differ."""
        try:
            if self._buffer and self.failed is None:
                await self._settle()
                if self.failed is None:
                    self._inflight = asyncio.create_task(self._send(bytes(self._buffer)))
            await self._settle()
            if self.failed is not None:
                await self.abort()
                return None
            if self._sent != size or self._hash.hexdigest() != digest.hex:
                raise IntegrityError(f"the parts sent of {digest} are not the verified bytes")
            client = await self._client()
            await client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
                IfNoneMatch="*",
            )
        except ClientError as exc:
            await self.abort()
            if not is_taken(exc):
                raise
            return False  # the same verified blob is there already
        except BaseException:
            await asyncio.shield(self.abort())
            raise
        return True

    async def abort(self) -> None:
        """Abort the upload once the part in flight went (cancelling it could leave an
        upload the bucket created after all); idempotent."""
        task, self._inflight = self._inflight, None
        if task is not None:
            with contextlib.suppress(Exception):
                await task
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        client = await self._client()
        with contextlib.suppress(ClientError):
            await client.abort_multipart_upload(
                Bucket=self._bucket, Key=self._key, UploadId=upload_id
            )


async def publish(
    stream: StreamingUpload | None,
    uploader: Uploader,
    path: Path,
    key: str,
    digest: Digest,
    size: int,
) -> bool:
    """Publish a verified blob: through its streaming upload when it had one that went
    well, else by uploading the verified file whole. Whether the object is new."""
    if stream is not None:
        is_new = await stream.complete(digest, size)
        if is_new is not None:
            return is_new
    return await uploader.upload(path, key, digest, size)
