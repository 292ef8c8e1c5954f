"""Blobs of the cluster tests: a cold one pushed to the fake upstream, its URL on a replica,
and waits (bounded) for it to be committed to the bucket."""

from __future__ import annotations

from typing import Any

from testkit.cluster import Replica
from testkit.fakeupstream import Blob, FakeRegistry, random_layer
from testkit.waiting import wait_until
from tests.cluster.evidence import Bucket

MIB = 1024 * 1024
LARGE = 20 * MIB  # three parts of the bucket's multipart upload (8 MiB, 8 MiB, 4 MiB)
WAIT = 30.0  # bound on every wait of the cluster tests


def cold_blob(hub: FakeRegistry, repo: str, seed: int, size: int = LARGE) -> Blob:
    """A blob of random bytes only the upstream has, in `repo`."""
    blob = random_layer(size, seed=seed)
    hub.push_blob(repo, blob)
    return blob


def blob_url(replica: Replica, repo: str, blob: Blob) -> str:
    return f"{replica.url}/v2/{repo}/blobs/{blob.digest}"


async def stored(bucket: Bucket, blob: Blob) -> dict[str, Any]:
    """The blob's object once the bucket has it, checked whole and correct."""

    async def found() -> dict[str, Any] | None:
        return await bucket.head(blob)

    head: dict[str, Any] = await wait_until(
        found, within=WAIT, message=f"{blob.digest} in the bucket"
    )
    assert head["ContentLength"] == len(blob.data)
    assert await bucket.digest_of(blob) == blob.digest
    return head


async def no_upload_left(bucket: Bucket, blob: Blob) -> None:
    """Wait until no multipart upload of the blob is left unfinished."""

    async def none_left() -> bool:
        return not await bucket.uploads(blob)

    await wait_until(none_left, within=WAIT, message=f"no upload of {blob.digest} left")


async def committed(bucket: Bucket, blob: Blob) -> None:
    """The bucket holds the blob, whole and correct, and no upload of it is left."""
    await stored(bucket, blob)
    await no_upload_left(bucket, blob)
