"""A tag asked for with an `Accept` that leaves out the type the upstream stores it as is
answered as registries answer it: the manifest the tag names, verified, never a 502 because
the upstream rewrote it on the fly into a manifest it cannot serve by digest."""

from __future__ import annotations

import aiohttp

from testkit.fakeupstream import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    FakeRegistry,
    Fault,
    make_image,
)
from tests.conftest import Client, StartMirror, answered, sha256


async def test_a_docker_image_for_a_client_that_takes_only_oci_manifests(
    start_mirror: StartMirror,
) -> None:
    """The OCI conformance suite's pull by tag (`Accept` of the OCI manifest type alone) of
    an image the upstream holds as Docker schema2, in front of a registry that would rewrite
    it into an OCI manifest of another digest, served only for the tag: the client gets the
    stored Docker manifest, its digest the one the image has everywhere."""
    image = make_image(seed=16)
    async with FakeRegistry(converts_docker_manifests=True) as upstream:
        upstream.push_image("library/app", "1", image)
        mirror = await start_mirror(upstream.url)
        for method in ("HEAD", "GET", "GET"):
            resp = await mirror.request(
                method, "/v2/library/app/manifests/1", headers={"Accept": OCI_MANIFEST}
            )
            assert resp.status == 200, await resp.text()
            assert resp.headers["Content-Type"] == DOCKER_MANIFEST
            assert resp.headers["Docker-Content-Digest"] == image.digest
            assert int(resp.headers["Content-Length"]) == image.size
            if method == "GET":
                assert await resp.read() == image.data
        by_digest = await mirror.get(f"/v2/library/app/manifests/{image.digest}")
        assert await by_digest.read() == image.data
        assert answered(upstream, kind="manifest", method="GET") == 1


async def test_the_converting_registry_really_converts(http: aiohttp.ClientSession) -> None:
    """What the test above is up against, asked directly: an OCI rewrite for the tag, and
    a 404 for the rewrite's digest."""
    image = make_image(seed=16)
    async with FakeRegistry(auth="none", converts_docker_manifests=True) as upstream:
        upstream.push_image("library/app", "1", image)
        url = f"{upstream.url}/v2/library/app/manifests"
        async with http.get(f"{url}/1", headers={"Accept": OCI_MANIFEST}) as resp:
            assert resp.headers["Content-Type"] == OCI_MANIFEST
            rewritten = resp.headers["Docker-Content-Digest"]
            assert rewritten == sha256(await resp.read()) != image.digest
        async with http.get(f"{url}/{rewritten}", headers={"Accept": OCI_MANIFEST}) as resp:
            assert resp.status == 404


async def test_a_digest_a_tag_names_but_the_upstream_serves_only_by_tag(
    mirror: Client, upstream: FakeRegistry
) -> None:
    """The tag's HEAD names a digest whose GET is a 404: the tag's own GET brings the bytes,
    and they are kept because they hash to the digest named."""
    image = make_image(seed=17)
    upstream.push_image("library/app", "1", image)
    upstream.add_fault(
        Fault("status", method="GET", path_contains=f"/manifests/{image.digest}", status=404)
    )
    resp = await mirror.get("/v2/library/app/manifests/1")
    assert resp.status == 200, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == image.digest
    assert await resp.read() == image.data
    tag_gets = upstream.filter_requests(kind="manifest", method="GET")
    assert [r.path.rsplit("/", 1)[1] for r in tag_gets if r.status == 200] == ["1"]
    again = await mirror.get(f"/v2/library/app/manifests/{image.digest}")
    assert await again.read() == image.data
    assert answered(upstream, kind="manifest", method="GET") == 2  # the 404, then the tag


async def test_a_tag_whose_answer_is_not_the_digest_its_head_named_is_a_502_and_forgotten(
    mirror: Client, upstream: FakeRegistry
) -> None:
    """The tag's GET brings another manifest than its HEAD named (it moved meanwhile, or
    the upstream contradicts itself): nothing is served as the named digest, the record is
    dropped, and the next pull asks again."""
    first, second = make_image(seed=18), make_image(seed=19)
    upstream.push_image("library/app", "1", first)
    upstream.push_image("library/app", None, second)
    upstream.add_fault(
        Fault("status", method="GET", path_contains=f"/manifests/{first.digest}", status=404)
    )
    upstream.add_fault(
        Fault(
            "replace",
            method="GET",
            path_contains="/manifests/1",
            body=second.data,
            headers={"Docker-Content-Digest": second.digest},
        )
    )
    resp = await mirror.get("/v2/library/app/manifests/1")
    assert resp.status == 502
    assert first.digest in (await resp.json())["errors"][0]["message"]
    again = await mirror.get("/v2/library/app/manifests/1")
    assert again.status == 200
    assert await again.read() == first.data
