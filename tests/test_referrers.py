"""Referrers (OCI 1.1) over real HTTP: `GET /v2/<name>/referrers/<digest>` lists the
manifests naming a subject, as an image index of exactly the index type, never 404.

Hosted repositories list what was pushed with a `subject`; cached ones what the upstream
lists, from its referrers API (pages followed and merged) or, without one, from the
fallback tag `sha256-<hex>` read as an ordinary tag. Filtering (`artifactType`, said in
`OCI-Filters-Applied`) and paging (`n`, `last`, `Link`) are the mirror's own; the list is
kept fresh for `tags_list_ttl` and served stale when the upstream fails."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient

from mirror import mediatypes
from mirror.meta import open_meta_store
from testkit.clock import FakeClock
from testkit.fakeupstream import FakeRegistry, Manifest, make_image, make_referrer
from tests.conftest import Client, StartMirror
from tests.hosted.pushing import (
    HOSTED,
    Blob,
    Pushable,
    error_code,
    image,
    index,
    logged_in_mirrors,
    push,
    push_blob,
    put_manifest,
)

REPO = "local/app"
CACHED = "library/app"
SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"
SBOM = "application/spdx+json"
NOTATION = "application/vnd.cncf.notary.signature"
EMPTY_CONFIG = Blob(b"{}")
NO_SUCH_DIGEST = "sha256:" + "0" * 64


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def start_pushing(aiohttp_client: AiohttpClient, tmp_path: Path, data_dir: Path) -> StartMirror:
    return logged_in_mirrors(aiohttp_client, tmp_path, data_dir)


@pytest.fixture
async def mirror(upstream: FakeRegistry, start_pushing: StartMirror, clock: FakeClock) -> Client:
    """Hosting `local/*`, caching the rest from `upstream` (with a referrers API)."""
    return await start_pushing(upstream.url, clock=clock, hosted=HOSTED, tags_list_ttl=30)


@pytest.fixture
async def tag_only() -> AsyncIterator[FakeRegistry]:
    """An upstream without the referrers API: clients keep the fallback tag there."""
    async with FakeRegistry(referrers_api=False) as registry:
        yield registry


def artifact(
    subject: Pushable, artifact_type: str, seed: str, annotations: dict[str, str] | None = None
) -> Pushable:
    """An OCI artifact naming `subject`: the empty config, one layer."""
    layer = Blob(f"{artifact_type} {seed}".encode())
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": EMPTY_CONFIG.descriptor("application/vnd.oci.empty.v1+json"),
        "layers": [layer.descriptor(artifact_type)],
        "subject": subject.descriptor(),
    }
    if annotations is not None:
        document["annotations"] = annotations
    return Pushable(mediatypes.OCI_MANIFEST, json.dumps(document).encode(), (EMPTY_CONFIG, layer))


async def referrers(
    mirror: Client, repo: str, subject: str, **query: str | list[str]
) -> aiohttp.ClientResponse:
    params = [(k, v) for k, vs in query.items() for v in ([vs] if isinstance(vs, str) else vs)]
    return await mirror.get(f"/v2/{repo}/referrers/{subject}", params=params)


async def listed(resp: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    """The descriptors of a referrers answer, checked to be an image index of exactly the
    index type (no charset: oras-go and ggcr compare the header whole)."""
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == mediatypes.OCI_INDEX
    document = json.loads(await resp.read())
    assert document["schemaVersion"] == 2
    assert document["mediaType"] == mediatypes.OCI_INDEX
    manifests: list[dict[str, Any]] = document["manifests"]
    return manifests


def digests(descriptors: list[dict[str, Any]]) -> list[str]:
    return [d["digest"] for d in descriptors]


# --- hosted repositories -----------------------------------------------------------------


async def test_a_hosted_subject_lists_every_manifest_pushed_with_it(
    mirror: Client, upstream: FakeRegistry
) -> None:
    subject = image("signed")
    await push(mirror, REPO, subject, "1")
    signature = artifact(subject, SIGNATURE, "sig", {"dev.cosignproject.cosign/signature": "x"})
    sbom = image("sbom", extra={"subject": subject.descriptor()})  # typed by its config
    for pushed in (signature, sbom):
        await push(mirror, REPO, pushed, pushed.digest)

    got = await listed(await referrers(mirror, REPO, subject.digest))

    assert sorted(got, key=lambda d: d["digest"]) == got
    assert {d["digest"]: d for d in got} == {
        signature.digest: {
            "mediaType": mediatypes.OCI_MANIFEST,
            "digest": signature.digest,
            "size": len(signature.data),
            "artifactType": SIGNATURE,
            "annotations": {"dev.cosignproject.cosign/signature": "x"},
        },
        sbom.digest: {
            "mediaType": mediatypes.OCI_MANIFEST,
            "digest": sbom.digest,
            "size": len(sbom.data),
            "artifactType": "application/vnd.oci.image.config.v1+json",
        },
    }
    assert upstream.requests == []


async def test_a_subject_nothing_refers_to_lists_nothing_and_a_bad_digest_is_refused(
    mirror: Client,
) -> None:
    subject = image("lonely")
    await push(mirror, REPO, subject, "1")

    for repo, digest in (
        (REPO, subject.digest),
        (REPO, NO_SUCH_DIGEST),
        ("local/new", NO_SUCH_DIGEST),
    ):
        assert await listed(await referrers(mirror, repo, digest)) == []
    for bad in ("sha256:abc", "latest", "md5:" + "0" * 32):
        resp = await referrers(mirror, REPO, bad)
        assert resp.status == 400
        assert await error_code(resp) == "DIGEST_INVALID"
    resp = await referrers(mirror, REPO, subject.digest, last="not-a-digest")
    assert resp.status == 400
    resp = await referrers(mirror, REPO, subject.digest, n="-1")
    assert (resp.status, await error_code(resp)) == (400, "PAGINATION_NUMBER_INVALID")


async def test_the_referrers_list_is_read_only(mirror: Client) -> None:
    resp = await mirror.put(f"/v2/{REPO}/referrers/{NO_SUCH_DIGEST}", data=b"{}")
    assert (resp.status, await error_code(resp)) == (405, "UNSUPPORTED")


async def test_artifact_type_filters_and_says_so(mirror: Client) -> None:
    subject = image("filtered")
    await push(mirror, REPO, subject, "1")
    pushed = {t: artifact(subject, t, t) for t in (SIGNATURE, SBOM, NOTATION)}
    for manifest in pushed.values():
        await push(mirror, REPO, manifest, manifest.digest)

    one = await referrers(mirror, REPO, subject.digest, artifactType=SBOM)
    assert digests(await listed(one)) == [pushed[SBOM].digest]
    assert one.headers["OCI-Filters-Applied"] == "artifactType"

    either = await referrers(mirror, REPO, subject.digest, artifactType=[SBOM, NOTATION])
    assert sorted(digests(await listed(either))) == sorted(
        [pushed[SBOM].digest, pushed[NOTATION].digest]
    )

    unfiltered = await referrers(mirror, REPO, subject.digest)
    assert len(await listed(unfiltered)) == 3
    assert "OCI-Filters-Applied" not in unfiltered.headers


async def test_pages_follow_their_link_to_the_whole_list(mirror: Client) -> None:
    subject = image("paged")
    await push(mirror, REPO, subject, "1")
    pushed = [artifact(subject, SIGNATURE, str(i)) for i in range(5)]
    for manifest in pushed:
        await push(mirror, REPO, manifest, manifest.digest)

    seen: list[str] = []
    resp = await referrers(mirror, REPO, subject.digest, n="2", artifactType=SIGNATURE)
    while True:
        page = digests(await listed(resp))
        assert 0 < len(page) <= 2
        seen += page
        if "Link" not in resp.headers:
            break
        target, rel = resp.headers["Link"].split(";")
        assert rel.strip() == 'rel="next"'
        assert f"/v2/{REPO}/referrers/{subject.digest}?" in target
        resp = await mirror.get(target.strip("<> "))
        assert resp.headers["OCI-Filters-Applied"] == "artifactType"

    assert seen == sorted(p.digest for p in pushed)
    empty = await referrers(mirror, REPO, subject.digest, n="0")
    assert await listed(empty) == []
    assert "Link" not in empty.headers


async def test_an_index_pushed_with_a_subject_answers_oci_subject_and_is_listed(
    mirror: Client,
) -> None:
    subject = image("indexed")
    await push(mirror, REPO, subject, "1")
    child = image("attestation child")
    await push(mirror, REPO, child, child.digest)
    plain = index([child])
    document = {**json.loads(plain.data), "artifactType": SBOM, "subject": subject.descriptor()}
    attestation = Pushable(mediatypes.OCI_INDEX, json.dumps(document).encode())

    resp = await put_manifest(mirror, REPO, attestation, attestation.digest)

    assert resp.status == 201, await resp.text()
    assert resp.headers["OCI-Subject"] == subject.digest
    [entry] = await listed(await referrers(mirror, REPO, subject.digest))
    assert entry == {
        "mediaType": mediatypes.OCI_INDEX,
        "digest": attestation.digest,
        "size": len(attestation.data),
        "artifactType": SBOM,
    }


async def test_a_referrer_may_be_pushed_before_its_subject(mirror: Client) -> None:
    subject = image("later")
    signature = artifact(subject, SIGNATURE, "early")
    for blob in signature.blobs:
        await push_blob(mirror, REPO, blob)
    resp = await put_manifest(mirror, REPO, signature, signature.digest)
    assert resp.status == 201
    assert digests(await listed(await referrers(mirror, REPO, subject.digest))) == [
        signature.digest
    ]


def tag_index(entries: list[Pushable]) -> Pushable:
    """The index a client keeps under a subject's referrers tag (`sha256-<hex>`)."""
    document = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_INDEX,
        "manifests": [
            {**entry.descriptor(), "annotations": {"listed": "by the client"}} for entry in entries
        ],
    }
    return Pushable(mediatypes.OCI_INDEX, json.dumps(document).encode())


def referrers_tag(subject: Pushable) -> str:
    return subject.digest.replace(":", "-")


async def test_a_referrers_tag_written_as_notation_does_lists_each_referrer_once(
    mirror: Client,
) -> None:
    """notation's default (`--force-referrers-tag`): push the signature, then the index
    under the subject's referrers tag. The API lists it once, as its own manifest says."""
    subject = image("notarized")
    await push(mirror, REPO, subject, "1")
    signature = artifact(subject, NOTATION, "sig")
    await push(mirror, REPO, signature, signature.digest)

    await push(mirror, REPO, tag_index([signature]), referrers_tag(subject))

    assert await listed(await referrers(mirror, REPO, subject.digest)) == [
        {
            "mediaType": mediatypes.OCI_MANIFEST,
            "digest": signature.digest,
            "size": len(signature.data),
            "artifactType": NOTATION,
        }
    ]
    tagged = await mirror.get(f"/v2/{REPO}/manifests/{referrers_tag(subject)}")
    assert tagged.status == 200  # the tag itself is served as any tag


async def test_manifests_a_referrers_tag_lists_are_listed_even_without_their_record(
    mirror: Client, data_dir: Path
) -> None:
    """Spec "Enabling the Referrers API": manifests listed in a referrers-tag index with a
    valid `subject` MUST be listed, also ones held from before the API recorded them
    (here: a repository given the signature in the metadata store alone). Listed entries
    without a `subject` are not referrers and stay unlisted."""
    subject = image("upgraded")
    await push(mirror, REPO, subject, "1")
    signature = artifact(subject, NOTATION, "old")
    plain = image("no subject")
    for held in (signature, plain):  # the bytes in the store, through another repository
        await push(mirror, "local/elsewhere", held, held.digest)
    meta = await open_meta_store(redis_url=None, key_prefix="mirror:", data_dir=data_dir)
    try:
        await meta.add_hosted(REPO, [signature.digest, plain.digest])
    finally:
        await meta.close()
    assert await listed(await referrers(mirror, REPO, subject.digest)) == []

    await push(mirror, REPO, tag_index([signature, plain]), referrers_tag(subject))

    assert digests(await listed(await referrers(mirror, REPO, subject.digest))) == [
        signature.digest
    ]


# --- cached repositories -----------------------------------------------------------------


def signed_upstream(upstream: FakeRegistry, repo: str = CACHED) -> tuple[Manifest, list[Manifest]]:
    """An image in `repo` with a signature and an SBOM referring to it."""
    subject = make_image(seed=7)
    upstream.push_image(repo, "1", subject)
    made = [
        make_referrer(subject, SIGNATURE, annotations={"created": "now"}),
        make_referrer(subject, SBOM, seed=1),
    ]
    for referrer in made:
        upstream.push_referrer(repo, referrer)
    return subject, sorted(made, key=lambda m: m.digest)


async def test_a_cached_repository_lists_the_upstreams_referrers_and_serves_each(
    mirror: Client, upstream: FakeRegistry
) -> None:
    subject, made = signed_upstream(upstream)

    got = await listed(await referrers(mirror, CACHED, subject.digest))

    assert digests(got) == [m.digest for m in made]
    signature = next(d for d in got if d["artifactType"] == SIGNATURE)
    assert signature["annotations"] == {"created": "now"}
    for referrer in made:  # pulled through like any content
        resp = await mirror.get(f"/v2/{CACHED}/manifests/{referrer.digest}")
        assert await resp.read() == referrer.data
        for blob in referrer.blobs:
            resp = await mirror.get(f"/v2/{CACHED}/blobs/{blob.digest}")
            assert await resp.read() == blob.data


async def test_the_upstreams_pages_are_merged_and_filtered_by_the_mirror(
    mirror: Client, upstream: FakeRegistry
) -> None:
    subject, made = signed_upstream(upstream)
    extra = make_referrer(subject, SIGNATURE, seed=2)
    upstream.push_referrer(CACHED, extra)
    upstream.referrers_page_size = 1

    resp = await referrers(mirror, CACHED, subject.digest, artifactType=SIGNATURE)

    assert sorted(digests(await listed(resp))) == sorted([made_sig(made), extra.digest])
    assert resp.headers["OCI-Filters-Applied"] == "artifactType"
    asked = upstream.filter_requests(kind="referrers", method="GET")
    assert [r.query.get("next") for r in asked if r.status == 200] == [None, "1", "2"]
    assert all("artifactType" not in r.query for r in asked)


def made_sig(made: list[Manifest]) -> str:
    return next(m.digest for m in made if SIGNATURE.encode() in m.data)


async def test_a_listed_referrer_is_linked_to_the_repository_that_lists_it(
    mirror: Client, upstream: FakeRegistry
) -> None:
    """Stored for one repository, a referrer is served to another that lists it without
    asking the upstream whether that repository holds it."""
    subject, made = signed_upstream(upstream, "library/one")
    signed_upstream(upstream, "library/two")
    for referrer in made:
        await (await mirror.get(f"/v2/library/one/manifests/{referrer.digest}")).read()
    await listed(await referrers(mirror, "library/two", subject.digest))
    upstream.reset_counts()

    for referrer in made:
        resp = await mirror.get(f"/v2/library/two/manifests/{referrer.digest}")
        assert await resp.read() == referrer.data
    assert upstream.count(server="registry") == 0


async def test_without_a_referrers_api_the_fallback_tag_lists_them(
    start_pushing: StartMirror, tag_only: FakeRegistry
) -> None:
    mirror = await start_pushing(tag_only.url, hosted=HOSTED)
    subject, made = signed_upstream(tag_only)
    tag = "sha256-" + subject.digest.removeprefix("sha256:")

    got = await listed(await referrers(mirror, CACHED, subject.digest))

    assert digests(got) == [m.digest for m in made]
    assert tag_only.count(kind="manifest", path=f"/v2/{CACHED}/manifests/{tag}") >= 1
    as_tag = await mirror.get(
        f"/v2/{CACHED}/manifests/{tag}", headers={"Accept": mediatypes.OCI_INDEX}
    )
    assert as_tag.status == 200
    assert as_tag.headers["Content-Type"] == mediatypes.OCI_INDEX
    assert digests(json.loads(await as_tag.read())["manifests"]) == digests(got)
    for referrer in made:
        resp = await mirror.get(f"/v2/{CACHED}/manifests/{referrer.digest}")
        assert await resp.read() == referrer.data


async def test_without_a_referrers_api_or_a_fallback_tag_the_list_is_empty(
    start_pushing: StartMirror, tag_only: FakeRegistry
) -> None:
    mirror = await start_pushing(tag_only.url, hosted=HOSTED)
    subject = make_image(seed=3)
    tag_only.push_image(CACHED, "1", subject)

    assert await listed(await referrers(mirror, CACHED, subject.digest)) == []
    assert await listed(await referrers(mirror, "library/nothing", NO_SUCH_DIGEST)) == []


@pytest.mark.parametrize("api", [True, False], ids=["referrers-api", "fallback-tag"])
async def test_the_list_is_kept_fresh_briefly_and_served_stale_when_the_upstream_fails(
    start_pushing: StartMirror, clock: FakeClock, api: bool
) -> None:
    async with FakeRegistry(referrers_api=api) as upstream:
        mirror = await start_pushing(
            upstream.url, clock=clock, hosted=HOSTED, tags_list_ttl=30, tag_ttl=30
        )
        subject, made = signed_upstream(upstream)
        expected = [m.digest for m in made]
        assert digests(await listed(await referrers(mirror, CACHED, subject.digest))) == expected
        upstream.reset_counts()

        clock.advance(29)
        fresh = await referrers(mirror, CACHED, subject.digest)
        assert digests(await listed(fresh)) == expected
        assert upstream.requests == []
        assert "Warning" not in fresh.headers

        newer = make_referrer(subject, NOTATION)
        upstream.push_referrer(CACHED, newer)
        clock.advance(2)
        again = await listed(await referrers(mirror, CACHED, subject.digest))
        assert newer.digest in digests(again)

    clock.advance(3600)  # the upstream is gone
    stale = await referrers(mirror, CACHED, subject.digest)
    assert digests(await listed(stale)) == digests(again)
    assert "Stale" in stale.headers["Warning"]


async def test_an_upstream_failing_with_nothing_kept_is_a_clean_error(
    mirror: Client, upstream: FakeRegistry
) -> None:
    subject, _ = signed_upstream(upstream)
    await upstream.close()

    resp = await referrers(mirror, CACHED, subject.digest)

    assert resp.status in (502, 503, 504)
    assert await error_code(resp) == "UNAVAILABLE"
