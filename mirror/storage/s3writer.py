"""Publishing verified bytes to S3: the only way a blob gets into the bucket.

A writer writes a local temp file (hashed as it goes, by `FileBlobWriter`); its commit
uploads that verified file under the blob's final key (a download's parts may have gone
already: `mirror.storage.s3stream`) and only then renames the file into the local hot
cache. The upload re-hashes what it sends:

- up to one part: one `PutObject` with the bytes' SHA-256 as `ChecksumSHA256` (the store
  checks it) after the bytes read back matched the digest;
- larger: a multipart upload under the final key; nothing is visible until
  `CompleteMultipartUpload`, which is sent only when the bytes sent hash to the digest and
  have the size verified, and `AbortMultipartUpload` otherwise (or on any failure).

Both are sent with `If-None-Match: *`: a 412 means the key already holds a blob, which was
itself published only after this check, so it counts as success (its size is checked).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as S3ConnectionError

from mirror.reference import Digest
from mirror.storage.filewriter import FileBlobWriter
from mirror.storage.protocol import IntegrityError, StoreUnavailable
from mirror.storage.s3client import part_size

BLOB_CONTENT_TYPE = "application/octet-stream"


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_missing(exc: ClientError) -> bool:
    return error_code(exc) in ("404", "NoSuchKey", "NotFound")


def is_taken(exc: ClientError) -> bool:
    """A conditional write found the key taken (412), or lost a race for it (409)."""
    return error_code(exc) in ("412", "PreconditionFailed", "409", "ConditionalRequestConflict")


def is_outage(exc: BaseException) -> bool:
    """The bucket gave no answer about the key: unreachable, timed out, or failing (5xx)."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return int(status) >= 500
    return isinstance(exc, S3ConnectionError | HTTPClientError)


@contextlib.contextmanager
def outage_as_unavailable(where: str) -> Iterator[None]:
    """Raise an outage of the bucket (`is_outage`) as `StoreUnavailable`."""
    try:
        yield
    except (ClientError, S3ConnectionError, HTTPClientError) as exc:
        if not is_outage(exc):
            raise
        raise StoreUnavailable(f"{where} is unreachable: {exc}") from exc


def sha256_checksum(data: bytes) -> str:
    return _checksum(hashlib.sha256(data))


def _checksum(hasher: Any) -> str:
    """The `ChecksumSHA256` of what `hasher` (a SHA-256) has hashed."""
    return base64.b64encode(hasher.digest()).decode()


class Uploader:
    """Uploads verified local files to keys of one bucket."""

    def __init__(self, client: Callable[[], Any], bucket: str) -> None:
        self._client = client  # an awaitable giving the aiobotocore client
        self._bucket = bucket

    async def upload(self, path: Path, key: str, digest: Digest, size: int) -> bool:
        """Publish the file at `path` (`size` bytes hashing to `digest`) under `key`;
        whether it is new there. IntegrityError (nothing published) when the bytes read
        back differ."""
        client = await self._client()
        chunk = part_size(size)
        with await asyncio.to_thread(path.open, "rb") as fh:
            if size <= chunk:
                return await self._put(client, fh, key, digest, size)
            return await self._multipart(client, fh, key, digest, size, chunk)

    async def _put(self, client: Any, fh: BinaryIO, key: str, digest: Digest, size: int) -> bool:
        data = await asyncio.to_thread(fh.read, size + 1)
        hasher = await asyncio.to_thread(hashlib.sha256, data)  # off the event loop
        _check(hasher, len(data), digest, size)
        try:
            await client.put_object(
                Bucket=self._bucket,
                Key=key,
                Body=data,
                ChecksumSHA256=_checksum(hasher),
                ContentType=BLOB_CONTENT_TYPE,
                IfNoneMatch="*",
            )
        except ClientError as exc:
            if not is_taken(exc):
                raise
            await self._check_existing(client, key, size)
            return False
        return True

    async def _multipart(
        self, client: Any, fh: BinaryIO, key: str, digest: Digest, size: int, chunk: int
    ) -> bool:
        created = await client.create_multipart_upload(
            Bucket=self._bucket, Key=key, ContentType=BLOB_CONTENT_TYPE
        )
        upload_id = created["UploadId"]
        try:
            parts = await self._send_parts(client, fh, key, upload_id, digest, size, chunk)
            await client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )
        except ClientError as exc:
            await self._abort(client, key, upload_id)
            if not is_taken(exc):
                raise
            await self._check_existing(client, key, size)
            return False
        except BaseException:
            await asyncio.shield(self._abort(client, key, upload_id))
            raise
        return True

    async def _send_parts(
        self,
        client: Any,
        fh: BinaryIO,
        key: str,
        upload_id: str,
        digest: Digest,
        size: int,
        chunk: int,
    ) -> list[dict[str, Any]]:
        """Every part of the file, hashed as sent; IntegrityError before anything can be
        completed when the bytes sent are not the verified ones."""
        hasher = hashlib.sha256()
        parts: list[dict[str, Any]] = []
        sent = 0
        while data := await asyncio.to_thread(fh.read, chunk):
            await asyncio.to_thread(hasher.update, data)
            sent += len(data)
            number = len(parts) + 1
            answer = await client.upload_part(
                Bucket=self._bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
            )
            parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        _check(hasher, sent, digest, size)
        return parts

    async def _abort(self, client: Any, key: str, upload_id: str) -> None:
        try:
            await client.abort_multipart_upload(Bucket=self._bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if not is_missing(exc) and error_code(exc) != "NoSuchUpload":
                raise

    async def _check_existing(self, client: Any, key: str, size: int) -> None:
        """The key was taken: by the same blob (same digest key), so only its size can
        differ, which would mean a store that broke its promise."""
        head = await client.head_object(Bucket=self._bucket, Key=key)
        if int(head["ContentLength"]) != size:
            raise IntegrityError(f"{key} exists with {head['ContentLength']} bytes, not {size}")


def _check(hasher: Any, sent: int, digest: Digest, size: int) -> None:
    if sent != size:
        raise IntegrityError(f"read back {sent} bytes of a verified {size}-byte blob")
    if (actual := hasher.hexdigest()) != digest.hex:
        raise IntegrityError(f"bytes read back hash to sha256:{actual}")


class S3BlobWriter:
    """A `BlobWriter` whose commit publishes to S3 before the local file becomes visible
    (in the hot cache, where a download's followers see it committed). `publish` uploads
    the verified file (path, key, digest, size) and tells whether the object is new;
    `feed`, when given, is told every chunk as it is written (a streaming upload), and
    `discard` is awaited on abort. `on_commit` is told (size, whether the object is new)."""

    def __init__(
        self,
        local: FileBlobWriter,
        key: str,
        publish: Callable[[Path, str, Digest, int], Awaitable[bool]],
        on_commit: Callable[[int, bool], None],
        *,
        feed: Callable[[bytes], Awaitable[None]] | None = None,
        discard: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._local = local
        self._key = key
        self._publish = publish
        self._on_commit = on_commit
        self._feed = feed
        self._discard = discard
        self.digest = local.digest
        self.written = 0
        self._committed = False
        # Feeds one chunk at a time: writes may overlap, and their local writes end in the
        # order they were made (one thread does them), which is the order they queue here.
        self._feeding = asyncio.Lock()

    async def write(self, chunk: bytes) -> None:
        await self._local.write(chunk)
        self.written = self._local.written
        if self._feed is not None:
            async with self._feeding:
                await self._feed(chunk)

    async def verify(self, expected_size: int | None = None) -> None:
        """Local only: a verified writer holds no upload open (an import verifies a whole
        bundle before it commits any of it)."""
        try:
            await self._local.verify(expected_size)
        except BaseException:
            await asyncio.shield(self.abort())
            raise

    async def commit(self, expected_size: int | None = None) -> None:
        assert not self._committed, "commit after commit"
        await self.verify(expected_size)
        try:
            is_new = await self._publish(
                self._local.path, self._key, self.digest, self._local.written
            )
        except BaseException:
            await asyncio.shield(self.abort())
            raise
        # The temp file may have been taken for a leftover: the bucket has the blob anyway.
        with contextlib.suppress(FileNotFoundError):
            await self._local.commit()
        self._committed = True
        self._on_commit(self._local.written, is_new)

    async def abort(self) -> None:
        await self._local.abort()
        if self._discard is not None and not self._committed:
            await self._discard()
