"""Uploads on S3 storage continue on any replica: the chunks a session received are objects
in the shared bucket (`uploads/<id>/<offset>`), its size is in the shared Redis, and the
closing `PUT` streams them through the verified writer. Nothing is published unless the
bytes hash to the digest named, and no chunk outlives its session: a finished, refused or
expired one leaves nothing under `uploads/`.

Two in-process replicas on one SeaweedFS prefix and one Redis (see `cluster_fixtures`),
each with a data dir of its own, pushing as an htpasswd user."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mirror.cache.uploads import UploadSessions
from mirror.meta.sqlite import SqliteMetaStore
from mirror.storage.s3client import MIN_PART_SIZE
from mirror.wiring import close_store
from testkit.clock import FakeClock
from testkit.fakeupstream import FakeRegistry
from testkit.seaweed import SeaweedFS
from tests.client_auth.helpers import basic, write_htpasswd
from tests.cluster_fixtures import StartReplica, stored_keys
from tests.conftest import Client
from tests.hosted.pushing import HOSTED, PASSWORD, PUSHER, Blob, error_code, start_upload
from tests.s3_fixtures import prefix_of, s3_store

REPO = "local/app"
# Its first chunk is larger than a part: streamed to the bucket as a multipart upload.
BLOB = Blob(hashlib.shake_256(b"pushed through two replicas").digest(MIN_PART_SIZE + 300_000))
FIRST, SECOND = MIN_PART_SIZE + 100_000, MIN_PART_SIZE + 200_000
TTL = 60.0


@pytest.fixture
async def replicas(
    start_replica: StartReplica, upstream: FakeRegistry, tmp_path: Path
) -> tuple[Client, Client]:
    users = write_htpasswd(tmp_path / "htpasswd", {PUSHER: PASSWORD})
    login = basic(PUSHER, PASSWORD)
    return (
        await start_replica("a", upstream.url, headers=login, hosted=HOSTED, htpasswd=str(users)),
        await start_replica("b", upstream.url, headers=login, hosted=HOSTED, htpasswd=str(users)),
    )


async def chunk(replica: Client, location: str, start: int, end: int) -> None:
    resp = await replica.patch(
        location, data=BLOB.data[start:end], headers={"Content-Range": f"{start}-{end - 1}"}
    )
    assert resp.status == 202, await resp.text()
    assert resp.headers["Range"] == f"0-{end - 1}"


async def upload_keys(seaweed: SeaweedFS, root: Path) -> list[str]:
    """What the cluster keeps of uploads in the bucket: chunk objects and pending chunks."""
    uploads = f"{prefix_of(root)}/uploads/"
    return [key for key in await stored_keys(seaweed, root) if uploads in key]


async def test_an_upload_started_on_one_replica_is_finished_on_another(
    replicas: tuple[Client, Client], seaweed: SeaweedFS, tmp_path: Path
) -> None:
    a, b = replicas
    location = await start_upload(a, REPO)
    await chunk(a, location, 0, FIRST)

    status = await b.get(location)
    assert status.status == 204 and status.headers["Range"] == f"0-{FIRST - 1}"
    await chunk(b, location, FIRST, SECOND)
    resp = await b.put(location, params={"digest": BLOB.digest}, data=BLOB.data[SECOND:])

    assert resp.status == 201, await resp.text()
    for replica in (a, b):
        got = await replica.get(f"/v2/{REPO}/blobs/{BLOB.digest}")
        assert got.status == 200 and await got.read() == BLOB.data
    assert await upload_keys(seaweed, tmp_path) == [], "the chunks go with the session"
    assert (await a.get(location)).status == 404


async def test_a_wrong_digest_on_the_closing_put_commits_nothing_and_keeps_no_chunk(
    replicas: tuple[Client, Client], seaweed: SeaweedFS, tmp_path: Path
) -> None:
    a, b = replicas
    location = await start_upload(a, REPO)
    await chunk(a, location, 0, FIRST)
    wrong = Blob(b"other bytes").digest

    resp = await b.put(location, params={"digest": wrong}, data=BLOB.data[FIRST:])

    assert resp.status == 400
    assert await error_code(resp) == "DIGEST_INVALID"
    assert await stored_keys(seaweed, tmp_path) == [], "no blob, no chunk, no pending upload"
    for replica in (a, b):
        for digest in (wrong, BLOB.digest):
            assert (await replica.get(f"/v2/{REPO}/blobs/{digest}")).status == 404
        assert (await replica.get(location)).status == 404


async def test_the_sweep_removes_only_expired_sessions_chunks(
    seaweed: SeaweedFS, tmp_path: Path
) -> None:
    clock = FakeClock()
    store = s3_store(tmp_path)
    meta = await SqliteMetaStore.open(tmp_path / "meta.sqlite3", clock=clock)
    sessions = UploadSessions(store, meta, ttl=TTL, clock=clock)
    try:
        abandoned = await sessions.start(REPO)
        await sessions.append(abandoned, _body(b"abandoned"))
        clock.advance(TTL + 1)
        live = await sessions.start(REPO)
        await sessions.append(live, _body(b"live"))
        clock.advance(1)  # both sessions' chunks are idle past the ttl; one has a record

        assert await sessions.sweep() == 1

        keys = await upload_keys(seaweed, tmp_path)
        assert [key.split("/")[-2] for key in keys] == [live.id]
    finally:
        await meta.close()
        await close_store(store)


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data
