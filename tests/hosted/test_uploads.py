"""Blob uploads into hosted repositories, over real HTTP, as the OCI distribution spec and
the clients that push (docker, containerd, containers/image, oras) use them."""

from __future__ import annotations

from typing import Any

import pytest

from testkit.fakeupstream import FakeRegistry, Manifest
from testkit.waiting import wait_until
from tests.conftest import Client, StartMirror
from tests.hosted.pushing import HOSTED, Blob, error_code, push_blob, start_upload

REPO = "local/app"
BLOB = Blob(b"0123456789" * 1000)


@pytest.fixture
async def mirror(upstream: FakeRegistry, start_mirror: StartMirror) -> Client:
    return await start_mirror(upstream.url, hosted=HOSTED)


async def assert_blob(mirror: Client, repo: str, blob: Blob) -> None:
    resp = await mirror.get(f"/v2/{repo}/blobs/{blob.digest}")
    assert resp.status == 200
    assert await resp.read() == blob.data
    assert resp.headers["Docker-Content-Digest"] == blob.digest


async def test_post_answers_202_with_a_session(mirror: Client) -> None:
    resp = await mirror.post(f"/v2/{REPO}/blobs/uploads/")

    assert resp.status == 202
    uuid = resp.headers["Docker-Upload-UUID"]
    assert resp.headers["Location"] == f"/v2/{REPO}/blobs/uploads/{uuid}"
    assert resp.headers["Range"] == "0-0"


async def test_post_then_put_publishes_the_blob_with_its_digest(
    mirror: Client, upstream: FakeRegistry
) -> None:
    location = await start_upload(mirror, REPO)
    resp = await mirror.put(location, params={"digest": BLOB.digest}, data=BLOB.data)

    assert resp.status == 201
    assert resp.headers["Docker-Content-Digest"] == BLOB.digest
    assert resp.headers["Location"] == f"/v2/{REPO}/blobs/{BLOB.digest}"
    await assert_blob(mirror, REPO, BLOB)
    assert upstream.requests == []  # a hosted repository never asks an upstream


async def test_a_single_post_with_digest_uploads_in_one_request(mirror: Client) -> None:
    resp = await mirror.post(
        f"/v2/{REPO}/blobs/uploads/", params={"digest": BLOB.digest}, data=BLOB.data
    )

    assert resp.status == 201
    assert resp.headers["Docker-Content-Digest"] == BLOB.digest
    await assert_blob(mirror, REPO, BLOB)


async def test_chunks_with_content_range_append_and_answer_the_range_so_far(
    mirror: Client,
) -> None:
    location = await start_upload(mirror, REPO)
    first, second = BLOB.data[:4000], BLOB.data[4000:]
    resp = await mirror.patch(
        location,
        data=first,
        headers={"Content-Range": "0-3999", "Content-Type": "application/octet-stream"},
    )
    assert resp.status == 202
    assert resp.headers["Range"] == "0-3999"
    location = resp.headers["Location"]
    resp = await mirror.patch(
        location, data=second, headers={"Content-Range": f"4000-{len(BLOB.data) - 1}"}
    )
    assert resp.headers["Range"] == f"0-{len(BLOB.data) - 1}"

    resp = await mirror.put(location, params={"digest": BLOB.digest})
    assert resp.status == 201
    await assert_blob(mirror, REPO, BLOB)


async def test_a_streamed_patch_without_content_range_appends(mirror: Client) -> None:
    location = await start_upload(mirror, REPO)

    async def stream() -> object:
        yield BLOB.data[:100]
        yield BLOB.data[100:]

    resp = await mirror.patch(location, data=stream())
    assert resp.status == 202
    assert resp.headers["Range"] == f"0-{len(BLOB.data) - 1}"
    resp = await mirror.put(resp.headers["Location"], params={"digest": BLOB.digest})
    assert resp.status == 201


async def test_an_out_of_order_chunk_is_refused_416_and_changes_nothing(mirror: Client) -> None:
    location = await start_upload(mirror, REPO)
    await mirror.patch(location, data=BLOB.data[:10], headers={"Content-Range": "0-9"})

    replayed = await mirror.patch(location, data=BLOB.data[:10], headers={"Content-Range": "0-9"})
    skipped = await mirror.patch(
        location, data=BLOB.data[20:30], headers={"Content-Range": "20-29"}
    )

    for resp in (replayed, skipped):
        assert resp.status == 416
        assert await error_code(resp) == "RANGE_INVALID"
        assert resp.headers["Range"] == "0-9"
    status = await mirror.get(location)
    assert status.status == 204
    assert status.headers["Range"] == "0-9"


async def test_a_content_range_that_disagrees_with_the_length_is_size_invalid(
    mirror: Client,
) -> None:
    location = await start_upload(mirror, REPO)
    resp = await mirror.patch(location, data=b"12345", headers={"Content-Range": "0-9"})
    assert resp.status == 400
    assert await error_code(resp) == "SIZE_INVALID"


async def test_status_of_a_session_is_204_with_its_range(mirror: Client) -> None:
    location = await start_upload(mirror, REPO)
    await mirror.patch(location, data=b"abc")

    resp = await mirror.get(location)

    assert resp.status == 204
    assert resp.headers["Range"] == "0-2"
    assert resp.headers["Location"] == location


async def test_a_cancelled_session_is_gone(mirror: Client) -> None:
    location = await start_upload(mirror, REPO)
    await mirror.patch(location, data=b"abc")

    assert (await mirror.delete(location)).status == 204

    resp = await mirror.get(location)
    assert resp.status == 404
    assert await error_code(resp) == "BLOB_UPLOAD_UNKNOWN"


async def test_a_wrong_digest_on_put_is_digest_invalid_and_publishes_nothing(
    mirror: Client,
) -> None:
    location = await start_upload(mirror, REPO)
    await mirror.patch(location, data=BLOB.data)
    wrong = "sha256:" + "0" * 64

    resp = await mirror.put(location, params={"digest": wrong})

    assert resp.status == 400
    assert await error_code(resp) == "DIGEST_INVALID"
    assert (await mirror.head(f"/v2/{REPO}/blobs/{wrong}")).status == 404
    assert (await mirror.head(f"/v2/{REPO}/blobs/{BLOB.digest}")).status == 404
    assert (await mirror.get(location)).status == 404  # the session ended


async def test_a_put_without_digest_is_digest_invalid(mirror: Client) -> None:
    location = await start_upload(mirror, REPO)
    resp = await mirror.put(location, data=b"abc")
    assert resp.status == 400
    assert await error_code(resp) == "DIGEST_INVALID"


async def test_an_unknown_or_foreign_session_is_blob_upload_unknown(mirror: Client) -> None:
    location = await start_upload(mirror, REPO)
    uuid = location.rsplit("/", 1)[1]
    for path in (
        f"/v2/{REPO}/blobs/uploads/{'f' * 32}",
        f"/v2/{REPO}/blobs/uploads/not-an-id",
        f"/v2/local/other/blobs/uploads/{uuid}",  # another repository's session
    ):
        resp = await mirror.get(path)
        assert resp.status == 404, path
        assert await error_code(resp) == "BLOB_UPLOAD_UNKNOWN"


async def test_a_blob_is_readable_only_in_the_repository_it_was_pushed_to(
    mirror: Client,
) -> None:
    await push_blob(mirror, REPO, BLOB)
    resp = await mirror.get(f"/v2/local/other/blobs/{BLOB.digest}")
    assert resp.status == 404
    assert await error_code(resp) == "BLOB_UNKNOWN"


async def test_a_mount_from_a_hosted_repository_holding_the_blob_is_201(mirror: Client) -> None:
    await push_blob(mirror, REPO, BLOB)

    resp = await mirror.post(
        "/v2/local/copy/blobs/uploads/", params={"mount": BLOB.digest, "from": REPO}
    )

    assert resp.status == 201
    assert resp.headers["Location"] == f"/v2/local/copy/blobs/{BLOB.digest}"
    assert resp.headers["Docker-Content-Digest"] == BLOB.digest
    await assert_blob(mirror, "local/copy", BLOB)


async def test_a_mount_that_cannot_be_made_falls_back_to_an_upload_session(
    mirror: Client,
) -> None:
    for source in ("local/empty", "library/alpine", "NOT/valid"):
        resp = await mirror.post(
            "/v2/local/copy/blobs/uploads/", params={"mount": BLOB.digest, "from": source}
        )
        assert resp.status == 202, source
        assert resp.headers["Location"].startswith("/v2/local/copy/blobs/uploads/")
    resp = await mirror.post("/v2/local/copy/blobs/uploads/", params={"mount": BLOB.digest})
    assert resp.status == 202  # no `from`


async def test_a_mount_from_a_cached_repository_holding_the_blob_is_201(
    mirror: Client, alpine: Manifest
) -> None:
    layer = alpine.blobs[-1]
    assert (await mirror.get(f"/v2/library/alpine/blobs/{layer.digest}")).status == 200

    async def mounted() -> bool:  # the pull's link is written as its download commits
        resp = await mirror.post(
            "/v2/local/copy/blobs/uploads/", params={"mount": layer.digest, "from": "alpine"}
        )
        return resp.status == 201

    await wait_until(mounted, within=10, message="the cached blob was never mounted")
    copied = await mirror.get(f"/v2/local/copy/blobs/{layer.digest}")
    assert await copied.read() == layer.data


async def test_a_push_to_a_repository_not_hosted_is_405_naming_the_hosted_patterns(
    mirror: Client,
) -> None:
    for path in ("/v2/library/alpine/blobs/uploads/", "/v2/ghcr.io/org/app/blobs/uploads/"):
        resp = await mirror.post(path)
        assert resp.status == 405, path
        body = await resp.json()
        assert body["errors"][0]["code"] == "UNSUPPORTED"
        assert "local/*" in body["errors"][0]["message"]


async def test_an_invalid_hosted_name_is_name_invalid(mirror: Client) -> None:
    resp = await mirror.post("/v2/local/App/blobs/uploads/")
    assert resp.status == 400
    assert await error_code(resp) == "NAME_INVALID"


async def test_hosted_repositories_behind_a_prefix_or_ns_take_pushes(mirror: Client) -> None:
    resp = await mirror.post("/v2/registry.local/team/app/blobs/uploads/")
    assert resp.status == 202
    resp = await mirror.post("/v2/team/app/blobs/uploads/", params={"ns": "registry.local"})
    assert resp.status == 202
    assert resp.headers["Location"].endswith("?ns=registry.local")
    resp = await mirror.post("/v2/app/blobs/uploads/", params={"ns": "registry.local/team"})
    assert resp.status == 405  # ns names a registry host, not a path
    location = await start_upload(mirror, "docker.io/local/app")
    resp = await mirror.put(location, params={"digest": BLOB.digest}, data=BLOB.data)
    assert resp.status == 201
    await assert_blob(mirror, REPO, BLOB)  # docker.io/local/app is local/app


async def test_an_upload_continues_on_another_mirror_sharing_the_metadata_store(
    upstream: FakeRegistry, start_mirror: StartMirror, meta_settings: dict[str, Any]
) -> None:
    first = await start_mirror(upstream.url, hosted=HOSTED, **meta_settings)
    location = await start_upload(first, REPO)
    resp = await first.patch(location, data=BLOB.data[:5000], headers={"Content-Range": "0-4999"})
    assert resp.status == 202
    await first.close()  # the mirror restarts (or the next request reaches another one)

    second = await start_mirror(upstream.url, hosted=HOSTED, **meta_settings)
    status = await second.get(location)
    assert status.status == 204
    assert status.headers["Range"] == "0-4999"
    resp = await second.patch(
        location, data=BLOB.data[5000:], headers={"Content-Range": f"5000-{len(BLOB.data) - 1}"}
    )
    resp = await second.put(location, params={"digest": BLOB.digest})
    assert resp.status == 201
    await assert_blob(second, REPO, BLOB)
