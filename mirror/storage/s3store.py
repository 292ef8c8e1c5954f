"""The S3 content store: blobs and manifests in an S3-compatible bucket, shared by every
replica that names it; the data dir keeps only download spools and a hot-blob cache.

Layout under the configured prefix (`s3://BUCKET/PREFIX`):

    blobs/sha256/<hex>        the blob's bytes (Content-Type application/octet-stream)
    manifests/sha256/<hex>    the exact manifest bytes; their media type is the object's
                              Content-Type (written with the bytes, in one request)
    _probe/<random>           written and deleted by `check_writable`
    uploads/<id>/<offset>     a chunk of a push in progress (see `mirror.storage.s3uploads`)

Nothing becomes visible unless its digest was verified (see `mirror.storage.s3writer`),
so an object under a digest key always holds those bytes. A download is coordinated per host
as on the filesystem (a flock on the spool in `<data_dir>/s3/tmp/`): its holder writes the
spool, and its commit uploads the verified spool and then moves it into the hot cache
(`<data_dir>/s3/blobs/`), where the followers on this host see it committed. What the
bucket holds is counted in `<data_dir>/s3/bucket-usage` by the processes of this host
(`mirror.storage.usage`), measured by listing the bucket.
Across replicas a download is coordinated above the store (`mirror.cache.cluster`): a
replica relaying another's download writes a `relayed` spool, whose commit finds the object
published by the leader (a HEAD) and only then uploads it itself. Should two replicas both
download a blob, both publish the same verified bytes (the second `If-None-Match` loses,
harmlessly).

The protocol's lookups (`blob_size`, `open_blob`, `has_manifest`, `read_manifest`) go
through the async client: one that misses the hot cache (or the recent manifests) costs a
request to the bucket, which the event loop does not wait on. Housekeeping (and
`StoredBlob.open`, for code in a thread) uses the blocking client.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from mirror import observe
from mirror.errors import RegistryError
from mirror.reference import Digest
from mirror.storage.filespool import FileSpool
from mirror.storage.filesystem import TEMP_GRACE_SECONDS, FileBlob, FilesystemStore
from mirror.storage.filewriter import FileBlobWriter
from mirror.storage.protocol import (
    ContentKind,
    IntegrityError,
    SpoolProgress,
    SpoolReader,
    StoredManifest,
    StoredObject,
    TempFile,
    Usage,
)
from mirror.storage.recent import RecentManifests
from mirror.storage.s3blob import HotCache, S3Blob
from mirror.storage.s3client import (
    MAX_BLOB_SIZE,
    MIN_PART_SIZE,
    AsyncClient,
    S3Location,
    part_size,
)
from mirror.storage.s3stream import StreamingUpload, publish
from mirror.storage.s3uploads import S3UploadSpool
from mirror.storage.s3writer import (
    S3BlobWriter,
    Uploader,
    error_code,
    is_missing,
    is_taken,
    outage_as_unavailable,
    sha256_checksum,
)
from mirror.storage.usage import SharedUsage

log = logging.getLogger(__name__)

# The data dir's part: `<data_dir>/s3/tmp/` (spools, temp files) and `<data_dir>/s3/blobs/`
# (the hot cache), apart from a filesystem store's content in the same dir.
LOCAL_DIR = "s3"
# A pending multipart upload is named as a temp file "s3-upload <key> <upload id>".
UPLOAD_MARK = "s3-upload"
_TREES: dict[ContentKind, str] = {"blob": "blobs", "manifest": "manifests"}


class S3Store:
    """A `ContentStore` in a bucket, with `data_dir` for spools and the hot cache."""

    def __init__(self, location: S3Location, data_dir: Path, local_cache_size: int) -> None:
        self._where = location
        self._blocking = location.blocking_client()
        self._client = AsyncClient(location)
        self._local = FilesystemStore(data_dir / LOCAL_DIR)
        self._hot = HotCache(self._local, local_cache_size)
        self._uploader = Uploader(self._client.get, location.bucket)
        self._recent = RecentManifests()
        self._upload_spool = S3UploadSpool(location, self._client.get, self._blocking)
        self._usage = SharedUsage(data_dir / LOCAL_DIR / "bucket-usage")

    @property
    def location(self) -> str:
        return self._where.describe()

    @property
    def usage(self) -> dict[ContentKind, Usage]:
        return self._usage.read()

    @property
    def uploads(self) -> S3UploadSpool:
        """In the bucket, so a push continues on any replica."""
        return self._upload_spool

    async def close(self) -> None:
        await self._client.close()

    def _key(self, kind: ContentKind, digest: Digest) -> str:
        return self._where.key(_TREES[kind], digest.algorithm, digest.hex)

    async def _lookup(self, key: str) -> dict[str, Any] | None:
        """The object's HEAD through the async client, or None when it is not there."""
        client = await self._client.get()
        try:
            with outage_as_unavailable(self.location):
                head: dict[str, Any] = await client.head_object(Bucket=self._where.bucket, Key=key)
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise
        return head

    def _head(self, key: str) -> dict[str, Any] | None:
        """`_lookup`, blocking (for housekeeping)."""
        try:
            with outage_as_unavailable(self.location):
                head: dict[str, Any] = self._blocking.head_object(
                    Bucket=self._where.bucket, Key=key
                )
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise
        return head

    def _count(self, kind: ContentKind, size: int, is_new: bool) -> None:
        if is_new:
            self._usage.add(kind, 1, size)

    # --- blobs ----------------------------------------------------------------------------

    async def blob_size(self, digest: Digest) -> int | None:
        if (hot := self._hot.blob(digest)) is not None:
            return hot.size
        head = await self._lookup(self._key("blob", digest))
        return None if head is None else int(head["ContentLength"])

    async def open_blob(self, digest: Digest) -> FileBlob | S3Blob | None:
        """From the hot cache when it holds the blob (sendfile), else from the bucket."""
        if (hot := self._hot.blob(digest)) is not None:
            return hot
        key = self._key("blob", digest)
        if (head := await self._lookup(key)) is None:
            return None

        async def get(range_header: str | None) -> Any:
            client = await self._client.get()
            extra = {} if range_header is None else {"Range": range_header}
            return await client.get_object(Bucket=self._where.bucket, Key=key, **extra)

        def get_blocking() -> Any:
            return self._blocking.get_object(Bucket=self._where.bucket, Key=key)

        return S3Blob(digest, int(head["ContentLength"]), key, get, get_blocking, self._hot)

    async def presigned_get(self, digest: Digest, expires_in: int) -> str:
        """A URL that GETs the blob straight from the bucket for `expires_in` seconds,
        signed with the mirror's credentials (offline: botocore signs it locally)."""
        client = await self._client.get()
        url: str = await client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self._where.bucket, "Key": self._key("blob", digest)},
            ExpiresIn=expires_in,
        )
        return url

    def blob_writer(self, digest: Digest) -> S3BlobWriter:
        """A temp file in the data dir, uploaded by `commit` once verified."""
        return self._s3_writer(self._local.blob_writer(digest), None)

    def _s3_writer(
        self, local: FileBlobWriter, size: int | None, *, relayed: bool = False
    ) -> S3BlobWriter:
        """`size` given (a download announced it) and above one part: parts are sent as
        they are written (see `mirror.storage.s3stream`). `relayed`: nothing is sent while
        writing, and the commit uploads only when the bucket does not hold the blob."""
        digest = local.digest
        key = self._key("blob", digest)
        stream = None
        if not relayed and size is not None and MIN_PART_SIZE < size <= MAX_BLOB_SIZE:
            chunk = part_size(size)
            if size > chunk:
                stream = StreamingUpload(self._client.get, self._where.bucket, key, chunk)

        async def publish_it(path: Path, key: str, digest: Digest, size: int) -> bool:
            with outage_as_unavailable(self.location):
                if relayed and await self._holds(key, size):
                    return False
                return await publish(stream, self._uploader, path, key, digest, size)

        def published(size: int, is_new: bool) -> None:
            self._count("blob", size, is_new)
            self._hot.admit(digest, size)

        return S3BlobWriter(
            local,
            key,
            publish_it,
            published,
            feed=None if stream is None else stream.feed,
            discard=None if stream is None else stream.abort,
        )

    async def _holds(self, key: str, size: int) -> bool:
        """Whether the bucket has the blob under `key` (a HEAD); IntegrityError if with
        another size than the `size` verified here, which only a broken store could do."""
        client = await self._client.get()
        try:
            head = await client.head_object(Bucket=self._where.bucket, Key=key)
        except ClientError as exc:
            if is_missing(exc):
                return False
            raise
        if int(head["ContentLength"]) != size:
            raise IntegrityError(f"{key} exists with {head['ContentLength']} bytes, not {size}")
        return True

    def spool(self, digest: Digest) -> S3Spool:
        return S3Spool(self._local.spool(digest), self)

    # --- manifests ------------------------------------------------------------------------

    async def has_manifest(self, digest: Digest) -> bool:
        """Read (and kept in memory) rather than only looked at: a manifest found is about
        to be served, and is asked about again and again."""
        return await self.read_manifest(digest) is not None

    def recent_manifest(self, digest: Digest) -> StoredManifest | None:
        return self._recent.get(digest)

    async def read_manifest(self, digest: Digest) -> StoredManifest | None:
        """From memory when read recently, else from the bucket (its bytes checked)."""
        if (manifest := self._recent.get(digest)) is not None:
            return manifest
        client = await self._client.get()
        try:
            with outage_as_unavailable(self.location):
                answer = await client.get_object(
                    Bucket=self._where.bucket, Key=self._key("manifest", digest)
                )
                async with answer["Body"] as body:
                    data = await body.read()
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise
        if hashlib.new(digest.algorithm, data).hexdigest() != digest.hex:
            raise IntegrityError(f"manifest {digest} in the bucket does not hash to its key")
        manifest = StoredManifest(data, str(answer["ContentType"]), digest)
        self._recent.keep(manifest)
        return manifest

    async def write_manifest(self, manifest: StoredManifest) -> None:
        """One conditional PUT with bytes, type and checksum: a manifest already stored
        keeps its first type (the PUT finds the key taken)."""
        digest = manifest.digest
        actual = hashlib.new(digest.algorithm, manifest.data).hexdigest()
        if actual != digest.hex:
            raise IntegrityError(f"manifest hashes to {digest.algorithm}:{actual}")
        client = await self._client.get()
        try:
            with outage_as_unavailable(self.location):
                await client.put_object(
                    Bucket=self._where.bucket,
                    Key=self._key("manifest", digest),
                    Body=manifest.data,
                    ContentType=manifest.media_type,
                    ChecksumSHA256=sha256_checksum(manifest.data),
                    IfNoneMatch="*",
                )
        except ClientError as exc:
            if not is_taken(exc):
                raise
            return
        self._count("manifest", len(manifest.data), True)
        self._recent.keep(manifest)

    # --- housekeeping ---------------------------------------------------------------------

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        pages = self._blocking.get_paginator("list_objects_v2")
        with outage_as_unavailable(self.location):
            for page in pages.paginate(Bucket=self._where.bucket, Prefix=prefix):
                yield from page.get("Contents", ())

    def objects(self, kind: ContentKind) -> Iterator[StoredObject]:
        """Keys not named like a digest are not content and are skipped."""
        tree = self._where.key(_TREES[kind], "")
        for item in self._list(tree):
            algorithm, _, name = item["Key"][len(tree) :].partition("/")
            try:
                digest = Digest.parse(f"{algorithm}:{name}")
            except RegistryError:
                continue
            yield StoredObject(kind, digest, int(item["Size"]), item["LastModified"].timestamp())

    def remove(self, kind: ContentKind, digest: Digest) -> int:
        """From the bucket and from this host's hot cache (another replica's hot copy goes
        with the cluster work)."""
        key = self._key(kind, digest)
        if kind == "blob":
            self._hot.drop(digest)
        else:
            self._recent.forget(digest)
        if (head := self._head(key)) is None:
            return 0
        self._blocking.delete_object(Bucket=self._where.bucket, Key=key)
        size = int(head["ContentLength"])
        self._usage.add(kind, -1, -size)
        return size

    def measure(self) -> dict[ContentKind, Usage]:
        measured: dict[ContentKind, Usage] = {}
        for kind in _TREES:
            usage = Usage()
            for item in self.objects(kind):
                usage.objects += 1
                usage.bytes += item.size
            measured[kind] = usage
        self._usage.set(measured)
        return measured

    def free_bytes(self) -> int:
        """The local spool's disk: every download passes through it."""
        return self._local.free_bytes()

    def check_writable(self) -> None:
        """The spool takes files, and the bucket takes (and deletes) a probe object."""
        self._local.check_writable()
        key = self._where.key("_probe", secrets.token_hex(8))
        try:
            with outage_as_unavailable(self.location):
                self._blocking.put_object(Bucket=self._where.bucket, Key=key, Body=b"")
                self._blocking.delete_object(Bucket=self._where.bucket, Key=key)
        except ClientError as exc:
            raise OSError(f"{self.location} takes no writes: {exc}") from exc

    def _uploads(self) -> Iterator[dict[str, Any]]:
        pages = self._blocking.get_paginator("list_multipart_uploads")
        with outage_as_unavailable(self.location):
            for page in pages.paginate(Bucket=self._where.bucket, Prefix=self._where.prefix):
                yield from page.get("Uploads", ())

    def stale_temp_files(self, older_than: float) -> list[TempFile]:
        """The local leftovers, and the orphaned uploads (`orphaned_uploads`)."""
        return self._local.stale_temp_files(older_than) + self.orphaned_uploads(older_than)

    def orphaned_uploads(self, older_than: float) -> list[TempFile]:
        """Multipart uploads under the prefix started before `older_than` (unix time): an
        upload lasts as long as its download, so an old one was orphaned by a crash. Named
        as temp files for `remove_temp_file`; their size is not listed (0)."""
        return [
            TempFile(f"{UPLOAD_MARK} {upload['Key']} {upload['UploadId']}", 0)
            for upload in self._uploads()
            if upload["Initiated"].timestamp() < older_than
        ]

    def remove_temp_file(self, temp: TempFile) -> None:
        """A local leftover, or an upload aborted (and counted: the janitor's, gc's and a
        start's alike)."""
        mark, _, rest = temp.name.partition(" ")
        if mark != UPLOAD_MARK:
            self._local.remove_temp_file(temp)
            return
        key, _, upload_id = rest.rpartition(" ")
        try:
            with outage_as_unavailable(self.location):
                self._blocking.abort_multipart_upload(
                    Bucket=self._where.bucket, Key=key, UploadId=upload_id
                )
        except ClientError as exc:
            if error_code(exc) != "NoSuchUpload":
                raise
            return  # aborted by someone else meanwhile
        observe.orphan_upload_aborted()

    def remove_temp_files(self) -> int:
        """The local leftovers (as on the filesystem), and uploads older than the grace."""
        removed = self._local.remove_temp_files()
        for temp in self.orphaned_uploads(time.time() - TEMP_GRACE_SECONDS):
            self.remove_temp_file(temp)
            removed += 1
        return removed


class S3Spool:
    """A download coordinated by the local `FileSpool` (per host), whose writer publishes
    to the bucket: the spool file is uploaded once verified, then moved into the hot cache,
    which is where followers see the blob committed."""

    def __init__(self, files: FileSpool, store: S3Store) -> None:
        self._files = files
        self._store = store

    def claim(self) -> bool:
        return self._files.claim()

    def writer(self, size: int | None, *, relayed: bool = False) -> S3BlobWriter:
        return self._store._s3_writer(self._files.writer(size), size, relayed=relayed)

    def release(self) -> None:
        self._files.release()

    def in_progress(self) -> bool:
        return self._files.in_progress()

    def watch(self) -> AsyncGenerator[SpoolProgress, None]:
        return self._files.watch()

    def open(self, *, committed: bool) -> SpoolReader | None:
        return self._files.open(committed=committed)
