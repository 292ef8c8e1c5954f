"""Deleting from hosted repositories (OCI "Content Management"): a manifest by digest takes
every tag naming it, a tag (OCI 1.1) only itself, a blob is unlinked from its repository at
once; each answers 202, and what is not there 404. Deleting needs the `delete` access."""

from __future__ import annotations

from pathlib import Path

import pytest

from mirror import mediatypes
from mirror.meta import open_meta_store
from testkit.fakeupstream import FakeRegistry
from tests.conftest import Client, StartMirror
from tests.hosted.pushing import HOSTED, PUSHER, error_code, image, index, push

UNKNOWN = "sha256:" + "9" * 64


@pytest.fixture
async def mirror(upstream: FakeRegistry, start_mirror: StartMirror) -> Client:
    return await start_mirror(upstream.url, hosted=HOSTED)


async def tags_of(mirror: Client, repo: str) -> list[str]:
    resp = await mirror.get(f"/v2/{repo}/tags/list")
    assert resp.status == 200
    tags: list[str] = (await resp.json())["tags"]
    return tags


async def test_deleting_a_manifest_by_digest_takes_every_tag_naming_it(mirror: Client) -> None:
    app, other = image("app"), image("other")
    digest = await push(mirror, "local/app", app, "1.0")
    await push(mirror, "local/app", app, "latest")
    await push(mirror, "local/app", other, "2.0")

    resp = await mirror.delete(f"/v2/local/app/manifests/{digest}")

    assert resp.status == 202
    for reference in (digest, "1.0", "latest"):
        gone = await mirror.get(f"/v2/local/app/manifests/{reference}")
        assert gone.status == 404
        assert await error_code(gone) == "MANIFEST_UNKNOWN"
    assert await tags_of(mirror, "local/app") == ["2.0"]
    assert (await mirror.get("/v2/local/app/manifests/2.0")).status == 200


async def test_deleting_a_tag_leaves_the_manifest_and_its_other_tags(mirror: Client) -> None:
    app = image("app")
    digest = await push(mirror, "local/app", app, "1.0")
    await push(mirror, "local/app", app, "latest")

    resp = await mirror.delete("/v2/local/app/manifests/latest")

    assert resp.status == 202
    assert (await mirror.get("/v2/local/app/manifests/latest")).status == 404
    assert await tags_of(mirror, "local/app") == ["1.0"]
    for reference in (digest, "1.0"):
        kept = await mirror.get(f"/v2/local/app/manifests/{reference}")
        assert await kept.read() == app.data


async def test_deleting_a_manifest_is_per_repository(mirror: Client) -> None:
    app = image("app")
    digest = await push(mirror, "local/app", app, "1.0")
    await push(mirror, "local/copy", app, "1.0")

    assert (await mirror.delete(f"/v2/local/app/manifests/{digest}")).status == 202

    assert (await mirror.get(f"/v2/local/copy/manifests/{digest}")).status == 200
    assert (await mirror.get("/v2/local/copy/manifests/1.0")).status == 200


async def test_deleting_an_unknown_manifest_or_tag_is_manifest_unknown(mirror: Client) -> None:
    await push(mirror, "local/app", image("app"), "1.0")
    for reference in (UNKNOWN, "no-such-tag"):
        resp = await mirror.delete(f"/v2/local/app/manifests/{reference}")
        assert resp.status == 404, reference
        assert await error_code(resp) == "MANIFEST_UNKNOWN"
    twice = await mirror.delete("/v2/local/app/manifests/1.0")
    assert twice.status == 202
    again = await mirror.delete("/v2/local/app/manifests/1.0")
    assert again.status == 404


async def test_deleting_a_referrer_takes_it_off_its_subjects_referrers(
    mirror: Client, data_dir: Path
) -> None:
    subject = image("subject")
    subject_digest = await push(mirror, "local/app", subject, "1.0")
    signature = image(
        "signature",
        extra={
            "artifactType": "application/vnd.example.signature",
            "subject": subject.descriptor(),
        },
    )
    signature_digest = await push(mirror, "local/app", signature, signature.digest)
    meta = await open_meta_store(redis_url=None, key_prefix="mirror:", data_dir=data_dir)
    assert len(await meta.referrers("local/app", subject_digest)) == 1

    assert (await mirror.delete(f"/v2/local/app/manifests/{signature_digest}")).status == 202

    assert await meta.referrers("local/app", subject_digest) == []
    await meta.close()
    assert (await mirror.get(f"/v2/local/app/manifests/{subject_digest}")).status == 200


async def test_deleting_a_blob_unlinks_it_from_the_repository_at_once(mirror: Client) -> None:
    app = image("app")
    await push(mirror, "local/app", app, "1.0")
    await push(mirror, "local/copy", app, "1.0")
    layer = app.blobs[1].digest

    resp = await mirror.delete(f"/v2/local/app/blobs/{layer}")

    assert resp.status == 202
    for method in ("GET", "HEAD"):
        gone = await mirror.request(method, f"/v2/local/app/blobs/{layer}")
        assert gone.status == 404, method
    assert await error_code(await mirror.get(f"/v2/local/app/blobs/{layer}")) == "BLOB_UNKNOWN"
    kept = await mirror.get(f"/v2/local/copy/blobs/{layer}")
    assert await kept.read() == app.blobs[1].data


async def test_deleting_an_unknown_blob_is_blob_unknown(mirror: Client) -> None:
    app = image("app")
    await push(mirror, "local/app", app, "1.0")
    for digest in (UNKNOWN, app.digest):  # nothing, and a manifest (not a blob)
        resp = await mirror.delete(f"/v2/local/app/blobs/{digest}")
        assert resp.status == 404, digest
        assert await error_code(resp) == "BLOB_UNKNOWN"
    elsewhere = await mirror.delete(f"/v2/local/other/blobs/{app.blobs[0].digest}")
    assert elsewhere.status == 404


async def test_a_user_allowed_to_push_but_not_delete_is_refused(
    upstream: FakeRegistry, start_mirror: StartMirror
) -> None:
    rules = [{"users": [PUSHER], "repositories": ["local/*"], "access": "push"}]
    mirror = await start_mirror(upstream.url, hosted=HOSTED, auth_rules=rules)
    app = image("app")
    digest = await push(mirror, "local/app", app, "1.0")

    for path in (
        f"/v2/local/app/manifests/{digest}",
        "/v2/local/app/manifests/1.0",
        f"/v2/local/app/blobs/{app.blobs[0].digest}",
    ):
        resp = await mirror.delete(path)
        assert resp.status == 403, path
        assert await error_code(resp) == "DENIED"
    assert (await mirror.get("/v2/local/app/manifests/1.0")).status == 200


async def test_a_docker_manifest_list_is_deleted_like_any_manifest(mirror: Client) -> None:
    child = image("child", media_type=mediatypes.DOCKER_MANIFEST)
    await push(mirror, "local/app", child, child.digest)

    listed = index([child], media_type=mediatypes.DOCKER_MANIFEST_LIST)
    digest = await push(mirror, "local/app", listed, "multi")

    assert (await mirror.delete(f"/v2/local/app/manifests/{digest}")).status == 202

    assert (await mirror.get("/v2/local/app/manifests/multi")).status == 404
    assert (await mirror.get(f"/v2/local/app/manifests/{child.digest}")).status == 200
