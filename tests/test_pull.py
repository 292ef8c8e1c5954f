"""Pulling through the mirror: cold pulls fetch once, warm pulls never ask the upstream."""

from __future__ import annotations

from testkit.fakeupstream import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    FakeRegistry,
    Manifest,
    make_image,
    random_layer,
)
from tests.clients import ALL_MANIFESTS, pull_like_docker
from tests.conftest import Client, StartMirror, answered, docker_io


async def test_ping_answers_with_the_api_version(mirror: Client) -> None:
    resp = await mirror.get("/v2/")
    assert resp.status == 200
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert await resp.json() == {}


async def test_cold_pull_fetches_each_object_once_and_warm_pull_asks_nothing(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest
) -> None:
    await pull_like_docker(mirror, "library/alpine", "3.19")
    assert answered(upstream, kind="manifest", method="HEAD") == 1
    assert answered(upstream, kind="manifest", method="GET") == 1
    assert answered(upstream, kind="blob", method="GET") == len(alpine.blobs)
    assert answered(upstream, server="cdn") == len(alpine.blobs)

    upstream.reset_counts()
    for blob in alpine.blobs:
        resp = await mirror.get(f"/v2/library/alpine/blobs/{blob.digest}")
        assert await resp.read() == blob.data
    resp = await mirror.get(f"/v2/library/alpine/manifests/{alpine.digest}")
    assert await resp.read() == alpine.data
    assert upstream.requests == [], "warm blob and digest pulls must not touch the upstream"

    # The tag is still fresh (tag_ttl): the whole pull again costs the upstream nothing.
    await pull_like_docker(mirror, "library/alpine", "3.19")
    assert upstream.requests == []


async def test_get_by_tag_returns_exact_upstream_bytes_and_headers(
    mirror: Client, alpine: Manifest
) -> None:
    resp = await mirror.get("/v2/library/alpine/manifests/3.19")
    assert resp.status == 200
    assert await resp.read() == alpine.data
    assert resp.headers["Content-Type"] == DOCKER_MANIFEST
    assert resp.headers["Docker-Content-Digest"] == alpine.digest
    assert resp.headers["ETag"] == f'"{alpine.digest}"'
    assert int(resp.headers["Content-Length"]) == alpine.size


async def test_one_segment_names_get_the_library_prefix(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest
) -> None:
    resp = await mirror.get("/v2/alpine/manifests/3.19")
    assert resp.status == 200
    assert await resp.read() == alpine.data
    paths = {r.path for r in upstream.filter_requests(kind="manifest")}
    assert paths == {
        "/v2/library/alpine/manifests/3.19",
        f"/v2/library/alpine/manifests/{alpine.digest}",
    }


async def test_library_prefix_can_be_switched_off(
    upstream: FakeRegistry, start_mirror: StartMirror, alpine: Manifest
) -> None:
    mirror = await start_mirror(
        upstream.url, upstream=docker_io(upstream.url, library_prefix=False)
    )
    resp = await mirror.get("/v2/alpine/manifests/3.19")
    assert resp.status == 404
    assert answered(upstream, path="/v2/alpine/manifests/3.19") >= 1


async def test_head_by_tag_answers_from_an_upstream_head_without_a_get(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest
) -> None:
    resp = await mirror.head("/v2/library/alpine/manifests/3.19")
    assert resp.status == 200
    assert resp.headers["Docker-Content-Digest"] == alpine.digest
    assert resp.headers["Content-Type"] == DOCKER_MANIFEST
    assert int(resp.headers["Content-Length"]) == alpine.size
    assert await resp.read() == b""
    assert answered(upstream, kind="manifest", method="GET") == 0


async def test_a_tag_resolves_per_accept_class(
    mirror: Client, upstream: FakeRegistry, multiarch: Manifest
) -> None:
    """A client that accepts manifest lists gets the list; one that does not gets the
    amd64 image, like from the registry itself. Both stay correct when cached."""
    amd64 = multiarch.child("linux/amd64")
    for _ in range(2):
        as_list = await mirror.get(
            "/v2/library/multi/manifests/1", headers={"Accept": ALL_MANIFESTS}
        )
        assert as_list.headers["Content-Type"] == DOCKER_MANIFEST_LIST
        assert await as_list.read() == multiarch.data
        single = await mirror.get(
            "/v2/library/multi/manifests/1", headers={"Accept": DOCKER_MANIFEST}
        )
        assert single.headers["Content-Type"] == DOCKER_MANIFEST
        assert single.headers["Docker-Content-Digest"] == amd64.digest
        assert await single.read() == amd64.data
    # Each distinct manifest was fetched with GET exactly once.
    assert answered(upstream, kind="manifest", method="GET") == 2


async def test_platform_manifests_of_an_index_are_served_by_digest(
    mirror: Client, multiarch: Manifest
) -> None:
    for child in multiarch.children:
        resp = await mirror.get(f"/v2/library/multi/manifests/{child.digest}")
        assert resp.status == 200
        assert await resp.read() == child.data
        for blob in child.blobs:
            blob_resp = await mirror.get(f"/v2/library/multi/blobs/{blob.digest}")
            assert await blob_resp.read() == blob.data


async def test_oci_images_keep_their_media_type(mirror: Client, upstream: FakeRegistry) -> None:
    image = make_image(oci=True, seed=7)
    upstream.push_image("org/oci", "v1", image)
    resp = await mirror.get("/v2/org/oci/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert resp.headers["Content-Type"] == OCI_MANIFEST
    assert await resp.read() == image.data


async def test_upstream_without_manifest_head_falls_back_to_get(
    start_mirror: StartMirror, alpine: Manifest
) -> None:
    async with FakeRegistry(head_supported=False, send_digest_header=False) as upstream:
        upstream.push_image("library/alpine", "3.19", alpine)
        mirror = await start_mirror(upstream.url)
        head = await mirror.head("/v2/library/alpine/manifests/3.19")
        assert head.status == 200
        assert head.headers["Docker-Content-Digest"] == alpine.digest
        resp = await mirror.get("/v2/library/alpine/manifests/3.19")
        assert await resp.read() == alpine.data
        assert resp.headers["Docker-Content-Digest"] == alpine.digest


async def test_unknown_tags_blobs_and_repositories_are_404(
    mirror: Client, alpine: Manifest
) -> None:
    cases = {
        "/v2/library/alpine/manifests/nope": "MANIFEST_UNKNOWN",
        "/v2/library/alpine/manifests/sha256:" + "0" * 64: "MANIFEST_UNKNOWN",
        "/v2/library/alpine/blobs/sha256:" + "0" * 64: "BLOB_UNKNOWN",
        "/v2/nobody/nothing/tags/list": "NAME_UNKNOWN",
    }
    for path, code in cases.items():
        resp = await mirror.get(path)
        assert resp.status == 404, path
        body = await resp.json()
        assert body["errors"][0]["code"] == code, path


async def test_blob_head_on_a_miss_uses_an_upstream_head_not_a_download(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest
) -> None:
    layer = alpine.layers[0]
    resp = await mirror.head(f"/v2/library/alpine/blobs/{layer.digest}")
    assert resp.status == 200
    assert int(resp.headers["Content-Length"]) == layer.size
    assert resp.headers["Docker-Content-Digest"] == layer.digest
    assert answered(upstream, kind="blob", method="GET") == 0
    assert answered(upstream, server="cdn") == 0


async def test_range_requests_on_cached_and_missing_blobs(
    mirror: Client, upstream: FakeRegistry
) -> None:
    blob = random_layer(300_000, seed=3)
    upstream.push_blob("library/data", blob)
    path = f"/v2/library/data/blobs/{blob.digest}"

    # On a miss the whole blob is fetched (and cached) and the slice served from it.
    cold = await mirror.get(path, headers={"Range": "bytes=1000-1999"})
    assert cold.status == 206
    assert cold.headers["Content-Range"] == f"bytes 1000-1999/{blob.size}"
    assert await cold.read() == blob.data[1000:2000]

    upstream.reset_counts()
    cases = {
        "bytes=0-0": (blob.data[:1], f"bytes 0-0/{blob.size}"),
        "bytes=299990-": (blob.data[299990:], f"bytes 299990-{blob.size - 1}/{blob.size}"),
        "bytes=-10": (blob.data[-10:], f"bytes {blob.size - 10}-{blob.size - 1}/{blob.size}"),
        "bytes=299990-999999": (blob.data[299990:], f"bytes 299990-{blob.size - 1}/{blob.size}"),
    }
    for header, (expected, content_range) in cases.items():
        resp = await mirror.get(path, headers={"Range": header})
        assert resp.status == 206, header
        assert resp.headers["Content-Range"] == content_range
        assert await resp.read() == expected
    unsatisfiable = await mirror.get(path, headers={"Range": f"bytes={blob.size}-"})
    assert unsatisfiable.status == 416
    assert unsatisfiable.headers["Content-Range"] == f"bytes */{blob.size}"
    # A malformed or multi-range header is ignored: the whole blob, 200.
    for header in ("bytes=a-b", "bytes=0-1,5-6", "items=0-1"):
        resp = await mirror.get(path, headers={"Range": header})
        assert resp.status == 200
        assert await resp.read() == blob.data
    assert upstream.requests == []


async def test_if_none_match_gets_304(mirror: Client, alpine: Manifest) -> None:
    resp = await mirror.get(
        f"/v2/library/alpine/manifests/{alpine.digest}",
        headers={"If-None-Match": f'"{alpine.digest}"'},
    )
    assert resp.status == 304
    layer = alpine.layers[0]
    await (await mirror.get(f"/v2/library/alpine/blobs/{layer.digest}")).read()
    resp = await mirror.get(
        f"/v2/library/alpine/blobs/{layer.digest}", headers={"If-None-Match": f'"{layer.digest}"'}
    )
    assert resp.status == 304


async def test_tags_list_is_paged_from_the_whole_list_with_links_to_the_mirror(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest
) -> None:
    for tag in ("3.18", "3.20", "latest"):
        upstream.tag("library/alpine", tag, alpine)
    resp = await mirror.get("/v2/alpine/tags/list?n=2&ns=docker.io")
    assert resp.status == 200
    assert (await resp.json())["tags"] == ["3.18", "3.19"]
    assert resp.headers["Link"] == '</v2/alpine/tags/list?n=2&last=3.19&ns=docker.io>; rel="next"'
    asked = upstream.filter_requests(kind="tags")
    assert [r.query for r in asked] == [{}] * len(asked), "the whole list"

    nxt = await mirror.get("/v2/alpine/tags/list?n=2&last=3.19")
    assert (await nxt.json())["tags"] == ["3.20", "latest"]
    assert "Link" not in nxt.headers
    everything = await mirror.get("/v2/alpine/tags/list")
    assert (await everything.json())["tags"] == ["3.18", "3.19", "3.20", "latest"]
    assert "Link" not in everything.headers
    assert upstream.count(kind="tags") == len(asked), "every page from the cached list"


async def test_containerd_ns_parameter_is_accepted_for_docker_hub(
    mirror: Client, alpine: Manifest
) -> None:
    resp = await mirror.get("/v2/library/alpine/manifests/3.19?ns=docker.io")
    assert resp.status == 200
    blob = alpine.layers[0]
    resp = await mirror.get(f"/v2/library/alpine/blobs/{blob.digest}?ns=docker.io")
    assert await resp.read() == blob.data


async def test_other_ns_values_are_refused_without_contacting_anyone(
    mirror: Client, upstream: FakeRegistry
) -> None:
    resp = await mirror.get("/v2/library/alpine/manifests/3.19?ns=evil.example.com")
    assert resp.status == 404
    error = (await resp.json())["errors"][0]
    assert error["code"] == "NAME_UNKNOWN"
    assert "docker.io" in error["message"]
    assert upstream.requests == []
