"""Reaching an S3-compatible bucket: where (bucket, prefix, endpoint, region, addressing),
the two clients (aiobotocore for the event loop, botocore for the store's blocking calls),
and the part-size arithmetic of multipart uploads.

Credentials are never passed here: both clients take them from the standard AWS chain
(`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, profiles, instance and pod roles), and
signing is botocore's.

botocore's clients are imported when one is made, not with this module: they weigh about
10 MB in every process, which a mirror on the filesystem (each of its workers) would carry
for nothing.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

MIB = 1024 * 1024
MIN_PART_SIZE = 8 * MIB  # above S3's 5 MiB floor (every part but the last)
MAX_PART_SIZE = 5 * 1024 * MIB  # S3's ceiling per part
MAX_PARTS = 10_000  # S3's limit per upload
# Parts aimed at: below MAX_PARTS, so a size slightly off (or a part rounded up) still fits.
TARGET_PARTS = 9_000
MAX_BLOB_SIZE = MAX_PART_SIZE * MAX_PARTS
CONNECT_TIMEOUT_SECONDS = 5.0


def part_size(size: int) -> int:
    """The part size for a blob of `size` bytes: MIN_PART_SIZE, or more when that would
    take more than TARGET_PARTS parts (a whole number of MiB, so parts align with reads).
    ValueError above what S3 can hold in one object (5 GiB x 10,000 parts)."""
    if size < 0 or size > MAX_BLOB_SIZE:
        raise ValueError(f"a blob of {size} bytes does not fit one S3 object")
    wanted = math.ceil(size / TARGET_PARTS)
    rounded = math.ceil(wanted / MIB) * MIB
    chosen = max(MIN_PART_SIZE, rounded)
    if math.ceil(size / chosen) > MAX_PARTS:  # only near the ceiling
        chosen = math.ceil(size / MAX_PARTS)
    return min(chosen, MAX_PART_SIZE)


@dataclass(frozen=True)
class S3Location:
    """Where the store's objects live: `bucket`, and `prefix` (empty, or ending in "/")
    before every key, plus how the endpoint is reached."""

    bucket: str
    prefix: str
    endpoint: str | None  # None: botocore's own (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, AWS)
    region: str
    path_style: bool

    @classmethod
    def from_settings(
        cls,
        storage: str,
        endpoint: str | None,
        region: str | None,
        path_style: bool | None,
        environ: Mapping[str, str] = os.environ,
    ) -> S3Location:
        """From the `storage`, `s3_endpoint`, `s3_region` and `s3_path_style` settings,
        with the defaults the AWS environment gives."""
        parts = urlsplit(storage)
        prefix = parts.path.strip("/")
        effective_endpoint = (
            endpoint or environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
        )
        return cls(
            bucket=parts.netloc,
            prefix=prefix + "/" if prefix else "",
            endpoint=endpoint,
            region=region or environ.get("AWS_REGION") or "us-east-1",
            path_style=path_style if path_style is not None else bool(effective_endpoint),
        )

    def key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _client_args(self) -> dict[str, Any]:
        import botocore.config  # when a client is made (see above)

        config = botocore.config.Config(
            s3={"addressing_style": "path" if self.path_style else "auto"},
            signature_version="s3v4",  # presigned URLs too (botocore would sign them V2)
            retries={"max_attempts": 3, "mode": "standard"},
            # An unreachable bucket is an outage to work around (misses pass through), not
            # something to wait a minute for (botocore's default) on every lookup.
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            # Checksums only where the store asks for them (SHA-256 on a single PUT).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        args: dict[str, Any] = {"region_name": self.region, "config": config}
        if self.endpoint is not None:
            args["endpoint_url"] = self.endpoint
        return args

    def blocking_client(self) -> Any:
        """A botocore client for the store's blocking calls (housekeeping, in threads)."""
        import botocore.session  # when a client is made (see above)

        return botocore.session.get_session().create_client("s3", **self._client_args())


class AsyncClient:
    """One aiobotocore client, opened in the event loop that first needs it and closed by
    `close()`."""

    def __init__(self, location: S3Location) -> None:
        self._location = location
        self._context: Any = None
        self._client: Any = None
        self._lock = asyncio.Lock()

    async def get(self) -> Any:
        async with self._lock:
            if self._client is None:
                from aiobotocore.session import get_session  # when a client is made (see above)

                session = get_session()
                self._context = session.create_client("s3", **self._location._client_args())
                self._client = await self._context.__aenter__()
            return self._client

    async def close(self) -> None:
        context, self._context, self._client = self._context, None, None
        if context is not None:
            await context.__aexit__(None, None, None)
