"""Manifest pushes into hosted repositories and everything read back from them, over real
HTTP: the four manifest types by tag and by digest, the checks that keep a hosted image
whole, tags and their pages, and that none of it ever reaches an upstream."""

from __future__ import annotations

import json

import aiohttp
import pytest

from mirror import mediatypes
from testkit.fakeupstream import FakeRegistry
from tests.conftest import Client, StartMirror
from tests.hosted.pushing import (
    HOSTED,
    Pushable,
    error_code,
    image,
    index,
    push,
    push_blob,
    put_manifest,
)

REPO = "local/app"


@pytest.fixture
async def mirror(upstream: FakeRegistry, start_mirror: StartMirror) -> Client:
    return await start_mirror(upstream.url, hosted=HOSTED, max_manifest_size="64KiB")


@pytest.mark.parametrize("media_type", [mediatypes.OCI_MANIFEST, mediatypes.DOCKER_MANIFEST])
async def test_an_image_pushed_by_tag_reads_back_byte_for_byte(
    mirror: Client, upstream: FakeRegistry, media_type: str
) -> None:
    pushed = image("tagged", media_type=media_type)
    resp = await put_pushed(mirror, pushed, "1.0")

    assert resp.status == 201
    assert resp.headers["Docker-Content-Digest"] == pushed.digest
    assert resp.headers["Location"] == f"/v2/{REPO}/manifests/{pushed.digest}"
    for reference in ("1.0", pushed.digest):
        got = await mirror.get(f"/v2/{REPO}/manifests/{reference}")
        assert got.status == 200
        assert await got.read() == pushed.data
        assert got.headers["Content-Type"] == media_type
        assert got.headers["Docker-Content-Digest"] == pushed.digest
        head = await mirror.head(f"/v2/{REPO}/manifests/{reference}")
        assert head.headers["Content-Length"] == str(len(pushed.data))
    assert upstream.requests == []


@pytest.mark.parametrize("media_type", [mediatypes.OCI_INDEX, mediatypes.DOCKER_MANIFEST_LIST])
async def test_an_index_pushed_after_its_children_by_digest_reads_back(
    mirror: Client, media_type: str
) -> None:
    child_type = (
        mediatypes.OCI_MANIFEST
        if media_type == mediatypes.OCI_INDEX
        else mediatypes.DOCKER_MANIFEST
    )
    children = [image(arch, media_type=child_type) for arch in ("amd64", "arm64")]
    for child in children:
        assert await push(mirror, REPO, child, child.digest) == child.digest
    top = index(children, media_type=media_type)

    assert await push(mirror, REPO, top, "multi") == top.digest

    got = await mirror.get(f"/v2/{REPO}/manifests/multi")
    assert await got.read() == top.data
    assert got.headers["Content-Type"] == media_type


async def test_an_index_naming_a_child_not_pushed_is_manifest_blob_unknown(
    mirror: Client,
) -> None:
    children = [image("here"), image("missing")]
    await push(mirror, REPO, children[0], children[0].digest)

    resp = await put_manifest(mirror, REPO, index(children), "multi")

    assert resp.status == 400
    body = await resp.json()
    assert body["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    assert body["errors"][0]["detail"]["digest"] == children[1].digest


async def test_a_manifest_naming_a_blob_the_repository_lacks_is_refused_with_the_digest(
    mirror: Client,
) -> None:
    pushed = image("partial")
    await push_blob(mirror, REPO, pushed.blobs[0])
    await push_blob(mirror, "local/elsewhere", pushed.blobs[1])  # another repository's

    resp = await put_manifest(mirror, REPO, pushed, "1")

    assert resp.status == 400
    body = await resp.json()
    assert body["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    assert body["errors"][0]["detail"]["missing"] == [b.digest for b in pushed.blobs[1:]]
    assert (await mirror.get(f"/v2/{REPO}/manifests/1")).status == 404


async def test_a_content_type_other_than_the_declared_media_type_is_manifest_invalid(
    mirror: Client,
) -> None:
    pushed = image("typed")
    for blob in pushed.blobs:
        await push_blob(mirror, REPO, blob)
    for content_type in (mediatypes.DOCKER_MANIFEST, "application/json", ""):
        resp = await put_manifest(mirror, REPO, pushed, "1", content_type=content_type)
        assert resp.status == 400, content_type
        assert await error_code(resp) == "MANIFEST_INVALID"


async def test_bytes_that_are_no_manifest_are_manifest_invalid(mirror: Client) -> None:
    for data in (b"not json", b"[]", json.dumps({"schemaVersion": 1}).encode()):
        resp = await mirror.put(
            f"/v2/{REPO}/manifests/1",
            data=data,
            headers={"Content-Type": mediatypes.OCI_MANIFEST},
        )
        assert resp.status == 400, data
        assert await error_code(resp) == "MANIFEST_INVALID"


async def test_a_manifest_over_the_size_limit_is_413(mirror: Client) -> None:
    pushed = image("big", extra={"annotations": {"padding": "x" * 70_000}})
    resp = await put_pushed(mirror, pushed, "big")
    assert resp.status == 413


async def test_a_manifest_of_4_mib_is_accepted_at_the_default_limit(
    upstream: FakeRegistry, start_mirror: StartMirror
) -> None:
    mirror = await start_mirror(upstream.url, hosted=HOSTED)
    pushed = image("four-mib", extra={"annotations": {"padding": "x" * (4_000_000)}})
    resp = await put_pushed(mirror, pushed, "big")
    assert resp.status == 201


async def test_a_manifest_put_under_a_digest_it_does_not_hash_to_is_digest_invalid(
    mirror: Client,
) -> None:
    pushed = image("mismatch")
    for blob in pushed.blobs:
        await push_blob(mirror, REPO, blob)
    wrong = "sha256:" + "0" * 64

    resp = await put_manifest(mirror, REPO, pushed, wrong)

    assert resp.status == 400
    assert await error_code(resp) == "DIGEST_INVALID"
    assert (await mirror.get(f"/v2/{REPO}/manifests/{wrong}")).status == 404


async def test_a_manifest_with_a_subject_answers_oci_subject(mirror: Client) -> None:
    subject = image("signed")
    await push(mirror, REPO, subject, "1")
    signature = image("signature", extra={"subject": subject.descriptor()})

    resp = await put_pushed(mirror, signature, signature.digest)

    assert resp.status == 201
    assert resp.headers["OCI-Subject"] == subject.digest


async def test_retagging_an_existing_manifest_uploads_nothing_and_moves_no_blob(
    mirror: Client,
) -> None:
    pushed = image("promoted")
    await push(mirror, REPO, pushed, "dev")
    got = await mirror.get(f"/v2/{REPO}/manifests/dev")

    resp = await mirror.put(
        f"/v2/{REPO}/manifests/prod",
        data=await got.read(),
        headers={"Content-Type": got.headers["Content-Type"]},
    )

    assert resp.status == 201
    prod = await mirror.get(f"/v2/{REPO}/manifests/prod")
    assert prod.headers["Docker-Content-Digest"] == pushed.digest


async def test_a_moved_tag_names_the_new_manifest(mirror: Client) -> None:
    first, second = image("first"), image("second")
    await push(mirror, REPO, first, "latest")
    await push(mirror, REPO, second, "latest")
    got = await mirror.get(f"/v2/{REPO}/manifests/latest")
    assert got.headers["Docker-Content-Digest"] == second.digest
    assert (await mirror.get(f"/v2/{REPO}/manifests/{first.digest}")).status == 200


async def test_blobs_read_back_whole_and_in_ranges(mirror: Client) -> None:
    pushed = image("ranges")
    await push(mirror, REPO, pushed, "1")
    layer = pushed.blobs[1]

    whole = await mirror.get(f"/v2/{REPO}/blobs/{layer.digest}")
    part = await mirror.get(f"/v2/{REPO}/blobs/{layer.digest}", headers={"Range": "bytes=10-19"})
    head = await mirror.head(f"/v2/{REPO}/blobs/{layer.digest}")

    assert await whole.read() == layer.data
    assert part.status == 206
    assert await part.read() == layer.data[10:20]
    assert head.headers["Content-Length"] == str(len(layer.data))


async def test_unknown_tags_digests_and_blobs_are_404_without_asking_upstream(
    mirror: Client, upstream: FakeRegistry
) -> None:
    missing = "sha256:" + "9" * 64
    for path, code in (
        (f"/v2/{REPO}/manifests/nope", "MANIFEST_UNKNOWN"),
        (f"/v2/{REPO}/manifests/{missing}", "MANIFEST_UNKNOWN"),
        (f"/v2/{REPO}/blobs/{missing}", "BLOB_UNKNOWN"),
    ):
        resp = await mirror.get(path)
        assert resp.status == 404, path
        assert await error_code(resp) == code
    assert upstream.requests == []


async def test_tags_list_in_pages_with_link(mirror: Client) -> None:
    pushed = image("tags")
    await push(mirror, REPO, pushed, "c")
    for tag in ("a", "b", "d"):
        assert (await put_manifest(mirror, REPO, pushed, tag)).status == 201

    whole = await mirror.get(f"/v2/{REPO}/tags/list")
    assert await whole.json() == {"name": REPO, "tags": ["a", "b", "c", "d"]}
    first = await mirror.get(f"/v2/{REPO}/tags/list", params={"n": "2"})
    assert (await first.json())["tags"] == ["a", "b"]
    assert first.headers["Link"] == f'</v2/{REPO}/tags/list?n=2&last=b>; rel="next"'
    rest = await mirror.get(f"/v2/{REPO}/tags/list", params={"n": "2", "last": "b"})
    assert (await rest.json())["tags"] == ["c", "d"]
    assert "Link" not in rest.headers


async def test_invalid_tags_are_tag_invalid(mirror: Client) -> None:
    resp = await put_manifest(mirror, REPO, image("x"), "-bad")
    assert resp.status == 400
    assert await error_code(resp) == "TAG_INVALID"


async def test_a_manifest_put_to_a_repository_not_hosted_is_405(mirror: Client) -> None:
    resp = await put_manifest(mirror, "library/alpine", image("x"), "1")
    assert resp.status == 405
    assert "local/*" in (await resp.json())["errors"][0]["message"]


async def put_pushed(mirror: Client, pushed: Pushable, reference: str) -> aiohttp.ClientResponse:
    for blob in pushed.blobs:
        await push_blob(mirror, REPO, blob)
    return await put_manifest(mirror, REPO, pushed, reference)
