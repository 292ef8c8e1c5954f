"""The OCI distribution-spec conformance suite's four workflows, over real HTTP.

The official suite (distribution-spec `conformance/`, Go) cannot be built here (no Go module
proxy), so these are its checks, one test per check or group of checks, named by the
workflow they belong to and described with what the suite asserts: pull (hosted and
proxied repositories), push, content discovery and content management (hosted). Pushes are
made as a logged-in user, as the suite does with `OCI_USERNAME`/`OCI_PASSWORD`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from mirror import mediatypes
from testkit.fakeupstream import FakeRegistry, make_image
from tests.conftest import Client, StartMirror
from tests.hosted.pushing import (
    HOSTED,
    Blob,
    Pushable,
    error_code,
    image,
    logged_in_mirrors,
    push,
    push_blob,
    put_manifest,
    start_upload,
)

REPO = "local/conformance"  # OCI_NAMESPACE
OTHER = "local/crossmount"  # OCI_CROSSMOUNT_NAMESPACE
CACHED = "library/conformance"
UNKNOWN = "sha256:" + "f" * 64
BLOB = Blob(b"conformance blob " * 512)
EMPTY_CONFIG = Blob(b"{}")
ARTIFACT = "application/vnd.example.conformance.sig"


@pytest.fixture
def start_pushing(aiohttp_client: AiohttpClient, tmp_path: Path, data_dir: Path) -> StartMirror:
    return logged_in_mirrors(aiohttp_client, tmp_path, data_dir)


@pytest.fixture
async def mirror(upstream: FakeRegistry, start_pushing: StartMirror) -> Client:
    return await start_pushing(upstream.url, hosted=HOSTED)


@dataclass(frozen=True)
class Pullable:
    """What the pull workflow reads: a repository, a tag, its manifest and one blob."""

    repo: str
    tag: str
    manifest: bytes
    media_type: str
    digest: str
    blob: Blob


@pytest.fixture(params=["hosted", "proxied"])
async def pullable(
    request: pytest.FixtureRequest, mirror: Client, upstream: FakeRegistry
) -> Pullable:
    """An image to pull, pushed to a hosted repository or kept by the upstream."""
    if request.param == "hosted":
        pushed = image("pull")
        digest = await push(mirror, REPO, pushed, "tagtest0")
        return Pullable(REPO, "tagtest0", pushed.data, pushed.media_type, digest, pushed.blobs[1])
    made = make_image(seed=16)
    upstream.push_image(CACHED, "tagtest0", made)
    layer = Blob(made.layers[0].data)
    return Pullable(CACHED, "tagtest0", made.data, made.media_type, made.digest, layer)


def referrer(subject: Pushable, artifact_type: str, seed: str) -> Pushable:
    layer = Blob(f"{artifact_type} {seed}".encode())
    document = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": EMPTY_CONFIG.descriptor("application/vnd.oci.empty.v1+json"),
        "layers": [layer.descriptor(artifact_type)],
        "subject": subject.descriptor(),
        "annotations": {"seed": seed},
    }
    return Pushable(mediatypes.OCI_MANIFEST, json.dumps(document).encode(), (EMPTY_CONFIG, layer))


def manifest_of(blobs: list[Blob], **extra: Any) -> Pushable:
    """An OCI image manifest of an empty config and `blobs` as layers, with `extra` fields."""
    document = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "config": EMPTY_CONFIG.descriptor("application/vnd.oci.image.config.v1+json"),
        "layers": [blob.descriptor("application/vnd.oci.image.layer.v1.tar") for blob in blobs],
        **extra,
    }
    return Pushable(mediatypes.OCI_MANIFEST, json.dumps(document).encode(), (EMPTY_CONFIG, *blobs))


# --- pull ---------------------------------------------------------------------------------


async def test_pull_manifest_get_and_head_by_tag_and_by_digest(
    mirror: Client, pullable: Pullable
) -> None:
    """Pull: "GET/HEAD request to manifest path (tag|digest) should yield 200", the body the
    pushed bytes, `Content-Type` exactly the manifest's type, `Docker-Content-Digest`."""
    for reference in (pullable.tag, pullable.digest):
        path = f"/v2/{pullable.repo}/manifests/{reference}"
        for method in ("GET", "HEAD"):
            resp = await mirror.request(method, path, headers={"Accept": pullable.media_type})
            assert resp.status == 200, (method, reference, await resp.text())
            assert resp.headers["Content-Type"] == pullable.media_type
            assert resp.headers["Docker-Content-Digest"] == pullable.digest
            assert int(resp.headers["Content-Length"]) == len(pullable.manifest)
            assert await resp.read() == (pullable.manifest if method == "GET" else b"")


async def test_pull_blob_get_and_head(mirror: Client, pullable: Pullable) -> None:
    """Pull: "HEAD/GET request to existing blob should yield 200"."""
    path = f"/v2/{pullable.repo}/blobs/{pullable.blob.digest}"
    head = await mirror.head(path)
    assert head.status == 200
    assert int(head.headers["Content-Length"]) == len(pullable.blob.data)
    resp = await mirror.get(path)
    assert resp.status == 200
    assert await resp.read() == pullable.blob.data


async def test_pull_unknown_manifest_and_blob_are_404(mirror: Client, pullable: Pullable) -> None:
    """Pull: "GET nonexistent manifest/blob should return 404" (MANIFEST_UNKNOWN,
    BLOB_UNKNOWN), by digest and by tag."""
    for reference in (UNKNOWN, "nosuchtag"):
        resp = await mirror.get(f"/v2/{pullable.repo}/manifests/{reference}")
        assert (resp.status, await error_code(resp)) == (404, "MANIFEST_UNKNOWN")
    resp = await mirror.get(f"/v2/{pullable.repo}/blobs/{UNKNOWN}")
    assert (resp.status, await error_code(resp)) == (404, "BLOB_UNKNOWN")


async def test_pull_an_invalid_manifest_name_is_404(mirror: Client, pullable: Pullable) -> None:
    """Pull: "GET request to invalid manifest name (`.INVALID_MANIFEST_NAME`) should return
    404" (not 400)."""
    resp = await mirror.get(f"/v2/{pullable.repo}/manifests/.INVALID_MANIFEST_NAME")
    assert (resp.status, await error_code(resp)) == (404, "MANIFEST_UNKNOWN")


# --- push ---------------------------------------------------------------------------------


async def test_push_post_then_put(mirror: Client) -> None:
    """Push: "POST request to blob upload path should yield 202 with Location", "PUT with
    digest should yield 201 with Location", then the blob is readable."""
    location = await start_upload(mirror, REPO)
    resp = await mirror.put(location, params={"digest": BLOB.digest}, data=BLOB.data)
    assert resp.status == 201
    assert resp.headers["Location"] == f"/v2/{REPO}/blobs/{BLOB.digest}"
    assert (await mirror.get(f"/v2/{REPO}/blobs/{BLOB.digest}")).status == 200


async def test_push_single_post_with_digest(mirror: Client) -> None:
    """Push: "POST request with digest and blob should yield 201 or 202"; after a 202 the
    blob is not there yet (the client must continue the session)."""
    resp = await mirror.post(
        f"/v2/{REPO}/blobs/uploads/", params={"digest": BLOB.digest}, data=BLOB.data
    )
    assert resp.status in (201, 202)
    blob = await mirror.get(f"/v2/{REPO}/blobs/{BLOB.digest}")
    assert blob.status == (200 if resp.status == 201 else 404)


async def test_push_chunked_patches_answer_ranges_from_zero(mirror: Client) -> None:
    """Push: "PATCH request with first chunk should return 202" with `Range: 0-<end>`,
    the next chunk likewise, "PUT with final chunk should return 201"."""
    data = BLOB.data
    location = await start_upload(mirror, REPO)
    first, second = data[:1000], data[1000:3000]
    resp = await mirror.patch(
        location,
        data=first,
        headers={
            "Content-Range": f"0-{len(first) - 1}",
            "Content-Type": "application/octet-stream",
        },
    )
    assert resp.status == 202
    assert resp.headers["Range"] == f"0-{len(first) - 1}"
    location = resp.headers["Location"]
    resp = await mirror.patch(
        location,
        data=second,
        headers={"Content-Range": f"1000-{3000 - 1}", "Content-Type": "application/octet-stream"},
    )
    assert resp.status == 202
    assert resp.headers["Range"] == "0-2999"
    resp = await mirror.put(
        resp.headers["Location"],
        params={"digest": BLOB.digest},
        data=data[3000:],
        headers={"Content-Range": f"3000-{len(data) - 1}"},
    )
    assert resp.status == 201, await resp.text()
    assert await (await mirror.get(f"/v2/{REPO}/blobs/{BLOB.digest}")).read() == data


async def test_push_an_out_of_order_chunk_is_416(mirror: Client) -> None:
    """Push: "PATCH request with out-of-order chunk should return 416" (distribution 2.8
    fails this one)."""
    location = await start_upload(mirror, REPO)
    resp = await mirror.patch(
        location, data=BLOB.data[100:200], headers={"Content-Range": "100-199"}
    )
    assert resp.status == 416


async def test_push_the_old_location_still_resolves_after_a_patch(mirror: Client) -> None:
    """Push: "GET request to the last chunk's Location should return 204" with `Range`, and
    the same chunk sent again to it is 416."""
    location = await start_upload(mirror, REPO)
    chunk = BLOB.data[:500]
    resp = await mirror.patch(location, data=chunk, headers={"Content-Range": "0-499"})
    assert resp.status == 202
    status = await mirror.get(location)
    assert status.status == 204
    assert status.headers["Range"] == "0-499"
    replayed = await mirror.patch(location, data=chunk, headers={"Content-Range": "0-499"})
    assert replayed.status == 416


async def test_push_cross_mount_from_a_repository_holding_the_blob(mirror: Client) -> None:
    """Push: "Cross-mounting of a blob ... should return 201" with `Location` exactly
    `/v2/<name>/blobs/<digest>`, and the blob is readable there."""
    await push_blob(mirror, OTHER, BLOB)
    resp = await mirror.post(
        f"/v2/{REPO}/blobs/uploads/", params={"mount": BLOB.digest, "from": OTHER}
    )
    assert resp.status == 201
    assert resp.headers["Location"] == f"/v2/{REPO}/blobs/{BLOB.digest}"
    assert (await mirror.head(f"/v2/{REPO}/blobs/{BLOB.digest}")).status == 200


@pytest.mark.parametrize(
    "query",
    [{"mount": BLOB.digest}, {"mount": UNKNOWN, "from": OTHER}],
    ids=["without-from", "blob-not-there"],
)
async def test_push_a_mount_that_cannot_be_made_opens_an_upload(
    mirror: Client, query: dict[str, str]
) -> None:
    """Push: "Cross-mounting without from, or of a blob the source lacks, should return 202"
    with a session `Location` under `/v2/<name>/blobs/uploads/`."""
    await push_blob(mirror, OTHER, BLOB)
    resp = await mirror.post(f"/v2/{REPO}/blobs/uploads/", params=query)
    assert resp.status == 202
    assert resp.headers["Location"].startswith(f"/v2/{REPO}/blobs/uploads/")


async def test_push_manifest_by_tag_and_by_digest(mirror: Client) -> None:
    """Push: "PUT manifest should yield 201" under a tag and under its digest, with
    `Location` and `Docker-Content-Digest`; both then GET 200."""
    pushed = image("put")
    for blob in pushed.blobs:
        await push_blob(mirror, REPO, blob)
    for reference in ("tagtest0", pushed.digest):
        resp = await put_manifest(mirror, REPO, pushed, reference)
        assert resp.status == 201
        assert resp.headers["Docker-Content-Digest"] == pushed.digest
        assert resp.headers["Location"] == f"/v2/{REPO}/manifests/{pushed.digest}"
        assert (await mirror.get(f"/v2/{REPO}/manifests/{reference}")).status == 200


async def test_push_manifest_under_a_wrong_digest_is_400(mirror: Client) -> None:
    """Push: "PUT manifest with invalid digest should return 400" (DIGEST_INVALID)."""
    pushed = image("wrong")
    for blob in pushed.blobs:
        await push_blob(mirror, REPO, blob)
    for wrong in (UNKNOWN, "sha256:nothex"):
        resp = await put_manifest(mirror, REPO, pushed, wrong)
        assert resp.status == 400
        assert await error_code(resp) == "DIGEST_INVALID"


async def test_push_a_manifest_without_layers(mirror: Client) -> None:
    """Push: "Manifest with zero layers" is accepted and served as pushed."""
    empty = manifest_of([])
    digest = await push(mirror, REPO, empty, "nolayers")
    resp = await mirror.get(f"/v2/{REPO}/manifests/{digest}")
    assert await resp.read() == empty.data


async def test_push_an_empty_blob(mirror: Client) -> None:
    """Push: "Empty blob upload" (OCI_SKIP_EMPTY_LAYER_PUSH_TEST unset): a zero-byte blob
    is pushed, served with length 0 and usable as a layer."""
    empty = Blob(b"")
    await push_blob(mirror, REPO, empty)
    resp = await mirror.get(f"/v2/{REPO}/blobs/{empty.digest}")
    assert resp.status == 200
    assert await resp.read() == b""
    await push(mirror, REPO, manifest_of([empty]), "emptylayer")


async def test_push_a_manifest_with_custom_fields_is_kept_byte_exact(mirror: Client) -> None:
    """Push: "custom fields" and `data` in descriptors: the manifest is stored and served
    byte for byte, its digest that of the pushed bytes."""
    layer = Blob(b"custom")
    custom = manifest_of(
        [layer],
        **{"x-custom": {"nested": [1, 2.5, None]}, "annotations": {"k": "\u00e9"}},
    )
    odd = Pushable(custom.media_type, custom.data.replace(b", ", b" ,\n\t"), custom.blobs)
    digest = await push(mirror, REPO, odd, "custom")
    assert digest == odd.digest
    assert await (await mirror.get(f"/v2/{REPO}/manifests/custom")).read() == odd.data


# --- content discovery --------------------------------------------------------------------


async def test_discovery_tags_list_pages_with_n_last_and_link(mirror: Client) -> None:
    """Content discovery: "GET tags/list should yield 200 with the tags"; with `n` at most
    n of them and a `Link` to the rest; with `last` only those after it (distribution 2.8
    fails both)."""
    pushed = image("tags")
    tags = ["a", "b", "c", "d", "e"]
    for tag in tags:
        await push(mirror, REPO, pushed, tag)

    every = await mirror.get(f"/v2/{REPO}/tags/list")
    assert (await every.json())["tags"] == tags
    first = await mirror.get(f"/v2/{REPO}/tags/list", params={"n": "2"})
    assert (await first.json())["tags"] == ["a", "b"]
    assert first.headers["Link"] == f'</v2/{REPO}/tags/list?n=2&last=b>; rel="next"'
    after = await mirror.get(f"/v2/{REPO}/tags/list", params={"n": "2", "last": "b"})
    assert (await after.json())["tags"] == ["c", "d"]
    rest = await mirror.get(f"/v2/{REPO}/tags/list", params={"last": "c"})
    assert (await rest.json())["tags"] == ["d", "e"]
    assert "Link" not in rest.headers


async def test_discovery_referrers_with_and_without_a_filter(mirror: Client) -> None:
    """Content discovery: "GET referrers should return 200" with an image index of
    `Content-Type` exactly the index type listing each manifest pushed with the subject
    (its own annotations); with `artifactType` only the matches and
    `OCI-Filters-Applied: artifactType`; pushing a referrer answers `OCI-Subject`."""
    subject = image("subject")
    await push(mirror, REPO, subject, "subject")
    made = [referrer(subject, ARTIFACT, "1"), referrer(subject, "application/other", "2")]
    for pushed in made:
        for blob in pushed.blobs:
            await push_blob(mirror, REPO, blob)
        resp = await put_manifest(mirror, REPO, pushed, pushed.digest)
        assert resp.status == 201
        assert resp.headers["OCI-Subject"] == subject.digest

    resp = await mirror.get(f"/v2/{REPO}/referrers/{subject.digest}")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == mediatypes.OCI_INDEX
    listed = json.loads(await resp.read())["manifests"]
    assert sorted(d["digest"] for d in listed) == sorted(m.digest for m in made)
    assert {d["annotations"]["seed"] for d in listed} == {"1", "2"}
    assert "OCI-Filters-Applied" not in resp.headers

    resp = await mirror.get(
        f"/v2/{REPO}/referrers/{subject.digest}", params={"artifactType": ARTIFACT}
    )
    assert resp.headers["Content-Type"] == mediatypes.OCI_INDEX
    assert resp.headers["OCI-Filters-Applied"] == "artifactType"
    assert [d["digest"] for d in json.loads(await resp.read())["manifests"]] == [made[0].digest]


async def test_discovery_referrers_of_an_unknown_subject_is_an_empty_index(
    mirror: Client,
) -> None:
    """Content discovery: referrers of a subject nothing names, in an empty or unknown
    repository too, is 200 with an empty index (never 404)."""
    for repo in (REPO, "local/neverpushed"):
        resp = await mirror.get(f"/v2/{repo}/referrers/{UNKNOWN}")
        assert resp.status == 200
        assert resp.headers["Content-Type"] == mediatypes.OCI_INDEX
        assert json.loads(await resp.read())["manifests"] == []


# --- content management -------------------------------------------------------------------


async def tags_of(mirror: Client, repo: str) -> list[str]:
    """The repository's tags: none for a 404 (a repository left with no tag may be gone)."""
    resp = await mirror.get(f"/v2/{repo}/tags/list")
    if resp.status == 404:
        return []
    assert resp.status == 200
    tags: list[str] = (await resp.json())["tags"] or []
    return tags


async def test_management_delete_a_tag(mirror: Client) -> None:
    """Content management: "DELETE request to manifest tag should return 202" (distribution
    2.8 fails it); the tag is then 404, the manifest still there by digest."""
    pushed = image("untag")
    digest = await push(mirror, REPO, pushed, "tagtest0")
    await push(mirror, REPO, pushed, "kept")

    resp = await mirror.delete(f"/v2/{REPO}/manifests/tagtest0")
    assert resp.status == 202
    gone = await mirror.get(f"/v2/{REPO}/manifests/tagtest0")
    assert (gone.status, await error_code(gone)) == (404, "MANIFEST_UNKNOWN")
    assert (await mirror.get(f"/v2/{REPO}/manifests/{digest}")).status == 200
    assert await tags_of(mirror, REPO) == ["kept"]


async def test_management_delete_a_manifest_takes_its_tags(mirror: Client) -> None:
    """Content management: "DELETE request to manifest (digest) should yield 202", then
    "GET request to deleted manifest should yield 404" and the tags list loses its tags."""
    pushed = image("delete")
    digest = await push(mirror, REPO, pushed, "one")
    await push(mirror, REPO, pushed, "two")

    resp = await mirror.delete(f"/v2/{REPO}/manifests/{digest}")
    assert resp.status == 202
    for reference in (digest, "one", "two"):
        gone = await mirror.get(f"/v2/{REPO}/manifests/{reference}")
        assert (gone.status, await error_code(gone)) == (404, "MANIFEST_UNKNOWN")
    assert await tags_of(mirror, REPO) == []


async def test_management_delete_a_blob_is_404_at_once(mirror: Client) -> None:
    """Content management: "DELETE request to blob URL should yield 202", then "GET request
    to deleted blob URL should yield 404" at once; an unknown blob's DELETE is 404."""
    await push_blob(mirror, REPO, BLOB)

    resp = await mirror.delete(f"/v2/{REPO}/blobs/{BLOB.digest}")
    assert resp.status == 202
    gone = await mirror.get(f"/v2/{REPO}/blobs/{BLOB.digest}")
    assert (gone.status, await error_code(gone)) == (404, "BLOB_UNKNOWN")
    unknown = await mirror.delete(f"/v2/{REPO}/blobs/{UNKNOWN}")
    assert (unknown.status, await error_code(unknown)) == (404, "BLOB_UNKNOWN")


async def test_management_content_is_pushed_again_after_its_delete(mirror: Client) -> None:
    """Content management, then push: a deleted manifest and blob are pushed again and served
    as before."""
    pushed = image("again")
    digest = await push(mirror, REPO, pushed, "again")
    assert (await mirror.delete(f"/v2/{REPO}/manifests/{digest}")).status == 202
    for blob in pushed.blobs:
        assert (await mirror.delete(f"/v2/{REPO}/blobs/{blob.digest}")).status == 202

    assert await push(mirror, REPO, pushed, "again") == digest
    assert await (await mirror.get(f"/v2/{REPO}/manifests/again")).read() == pushed.data
    for blob in pushed.blobs:
        assert await (await mirror.get(f"/v2/{REPO}/blobs/{blob.digest}")).read() == blob.data
