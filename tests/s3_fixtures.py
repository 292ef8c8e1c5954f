"""The SeaweedFS the S3 tests share: one `weed mini` per test session (it takes about two
seconds to start), each test under a key prefix of its own. The session's AWS environment
(credentials, endpoint, region) points at it while it runs, as the standard AWS chain reads
it in this process and in the processes it starts. A test that stops the store starts one
of its own (`private_seaweed`).

Helpers look at the bucket as the tests' own client (`pending_uploads`, `blob_head`)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from mirror.reference import Digest
from mirror.storage.s3client import S3Location
from mirror.storage.s3store import S3Store
from testkit.seaweed import SeaweedFS

BUCKET = "mirror"


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    server = SeaweedFS(tmp_path_factory.mktemp("seaweed"), BUCKET)
    saved = {key: os.environ.get(key) for key in server.env()}
    with server:
        os.environ.update(server.env())
        try:
            yield server
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture
async def private_seaweed(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[SeaweedFS]:
    """A SeaweedFS of the test's own, which it may stop and start again (same endpoint,
    same content) while the session's stays up for the others; the AWS environment points
    at it meanwhile."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweed"), BUCKET)
    await asyncio.to_thread(server.start)
    try:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        yield server
    finally:
        await asyncio.to_thread(server.stop)


def prefix_of(root: Path) -> str:
    """The key prefix a test rooted at `root` uses (the same in the processes it starts)."""
    return "t-" + hashlib.sha256(str(root).encode()).hexdigest()[:12]


def s3_store(root: Path, data_dir: Path | None = None, local_cache_size: int = 1 << 30) -> S3Store:
    """An S3 store on the session's SeaweedFS (found through the environment), its prefix
    named by `root`, its local part in `data_dir` (default `root/data`: pass another for a
    second replica, with an empty hot cache)."""
    location = S3Location.from_settings(f"s3://{BUCKET}/{prefix_of(root)}", None, None, None)
    return S3Store(location, data_dir or root / "data", local_cache_size)


def s3_settings(root: Path, redis_url: str, **more: Any) -> dict[str, Any]:
    """Mirror settings for S3 storage under `root`'s prefix, with Redis at `redis_url`."""
    return {"storage": f"s3://{BUCKET}/{prefix_of(root)}", "redis_url": redis_url, **more}


def pending_uploads(seaweed: SeaweedFS, root: Path) -> list[dict[str, Any]]:
    """The multipart uploads pending under `root`'s prefix."""
    answer = seaweed.client().list_multipart_uploads(Bucket=BUCKET, Prefix=prefix_of(root))
    uploads: list[dict[str, Any]] = answer.get("Uploads", [])
    return uploads


def blob_key(root: Path, digest: Digest | str) -> str:
    return f"{prefix_of(root)}/blobs/sha256/{str(digest).removeprefix('sha256:')}"


def blob_head(seaweed: SeaweedFS, root: Path, digest: Digest | str) -> dict[str, Any] | None:
    """The HEAD of the blob's object under `root`'s prefix, or None when it is not there."""
    try:
        found: dict[str, Any] = seaweed.client().head_object(
            Bucket=BUCKET, Key=blob_key(root, digest)
        )
    except Exception:
        return None
    return found
