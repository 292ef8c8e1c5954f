"""Abandoned uploads expire: the session idle for `upload_ttl` is unknown to clients, and
the sweep removes its bytes from the data dir (a live session's stay)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mirror.cache.uploads import UploadSessions
from mirror.meta.sqlite import SqliteMetaStore
from mirror.storage.filesystem import FilesystemStore
from mirror.storage.fileuploads import UPLOADS_DIR
from testkit.clock import FakeClock
from testkit.fakeupstream import FakeRegistry
from tests.conftest import Client, StartMirror
from tests.hosted.pushing import HOSTED, error_code, start_upload

TTL = 60.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def mirror(upstream: FakeRegistry, start_mirror: StartMirror, clock: FakeClock) -> Client:
    return await start_mirror(upstream.url, hosted=HOSTED, upload_ttl=TTL, clock=clock)


async def test_an_idle_upload_expires_and_is_unknown(mirror: Client, clock: FakeClock) -> None:
    location = await start_upload(mirror, "local/app")
    await mirror.patch(location, data=b"abc")
    clock.advance(TTL + 1)

    resp = await mirror.get(location)

    assert resp.status == 404
    assert await error_code(resp) == "BLOB_UPLOAD_UNKNOWN"


async def test_an_upload_in_use_does_not_expire(mirror: Client, clock: FakeClock) -> None:
    location = await start_upload(mirror, "local/app")
    for _ in range(3):
        clock.advance(TTL / 2)
        assert (await mirror.patch(location, data=b"abc")).status == 202
    assert (await mirror.get(location)).headers["Range"] == "0-8"


async def test_the_sweep_removes_only_expired_uploads_bytes(
    clock: FakeClock, tmp_path: Path
) -> None:
    meta = await SqliteMetaStore.open(tmp_path / "meta.sqlite3", clock=clock)
    sessions = UploadSessions(FilesystemStore(tmp_path), meta, ttl=TTL, clock=clock)
    abandoned = await sessions.start("local/app")
    await sessions.append(abandoned, _chunks(b"abc"))
    clock.advance(TTL + 1)
    live = await sessions.start("local/app")

    assert await sessions.sweep() == 1

    assert {path.name for path in (tmp_path / UPLOADS_DIR).iterdir()} == {live.id}
    await meta.close()


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data
