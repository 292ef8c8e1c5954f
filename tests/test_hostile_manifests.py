"""An upstream cannot hand the mirror a manifest it cannot read or a type it would not serve:
deeply nested, invalid or non-object JSON and off-list media types are refused with a 502
naming the upstream, and never stored; one upstream cannot change the type another one's
clients see for a shared digest; every answer says `nosniff`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mirror import mediatypes
from testkit.fakeupstream import FakeRegistry, Fault, Manifest, make_image
from tests.clients import ALL_MANIFESTS
from tests.conftest import Client, StartMirror

NESTED = b'{"schemaVersion": 2, "x": ' + b"[" * 2000 + b"]" * 2000 + b"}"


def raw(data: bytes, media_type: str = mediatypes.OCI_MANIFEST) -> Manifest:
    return Manifest(data=data, media_type=media_type)


def stored_manifests(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "manifests").rglob("*") if p.is_file()]


async def refused(mirror: Client, path: str) -> str:
    resp = await mirror.get(path, headers={"Accept": ALL_MANIFESTS})
    assert resp.status == 502
    return str((await resp.json())["errors"][0]["message"])


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (NESTED, "nested more than 64 levels"),
        (b"{not json", "not valid JSON"),
        (b'["a", "list"]', "a JSON list, not an object"),
        (b"\xff\xfe", "not valid JSON"),
    ],
    ids=["nested-2000", "invalid", "list", "not-utf8"],
)
async def test_an_unparseable_manifest_is_refused_and_not_stored(
    upstream: FakeRegistry, start_mirror: StartMirror, data_dir: Path, data: bytes, why: str
) -> None:
    upstream.push_image("evil/app", "1", raw(data))
    mirror = await start_mirror(upstream.url)
    for path in ("/v2/evil/app/manifests/1", f"/v2/evil/app/manifests/{raw(data).digest}"):
        message = await refused(mirror, path)
        assert upstream.url.split("//")[1] in message and why in message
    assert stored_manifests(data_dir) == []
    assert (await mirror.get("/v2/")).status == 200  # the mirror lives on


async def test_a_manifest_sent_as_html_is_refused_and_not_stored(
    upstream: FakeRegistry, start_mirror: StartMirror, data_dir: Path
) -> None:
    image = make_image(seed=7)
    document = json.loads(image.data)
    del document["mediaType"]  # no type of its own: the header's would be the one
    bare = raw(json.dumps(document).encode(), "text/html")
    upstream.push_image("evil/html", "1", bare)
    mirror = await start_mirror(upstream.url)
    message = await refused(mirror, "/v2/evil/html/manifests/1")
    assert "'text/html', not a manifest type" in message
    assert stored_manifests(data_dir) == []
    assert upstream.count(method="GET", kind="manifest") == 1


async def test_a_header_that_contradicts_the_manifest_s_own_type_is_refused(
    upstream: FakeRegistry, start_mirror: StartMirror, data_dir: Path
) -> None:
    image = make_image(seed=8)  # declares the Docker manifest type
    upstream.push_image("evil/liar", "1", raw(image.data, mediatypes.OCI_MANIFEST))
    mirror = await start_mirror(upstream.url)
    message = await refused(mirror, f"/v2/evil/liar/manifests/{image.digest}")
    assert f"declares media type {image.media_type} but was sent as" in message
    assert stored_manifests(data_dir) == []


@pytest.fixture
async def other() -> AsyncIterator[FakeRegistry]:
    async with FakeRegistry() as registry:
        yield registry


async def test_one_upstream_cannot_change_the_type_another_s_clients_see(
    upstream: FakeRegistry, other: FakeRegistry, start_mirror: StartMirror
) -> None:
    """The same bytes (no `mediaType` of their own) on two registries with different
    Content-Types: the first stored type is kept, the second upstream's is refused."""
    document = json.loads(make_image(seed=9).data)
    del document["mediaType"]
    data = json.dumps(document).encode()
    upstream.push_image("org/app", "1", raw(data, mediatypes.DOCKER_MANIFEST))
    other.push_image("org/app", "1", raw(data, mediatypes.OCI_MANIFEST))
    mirror = await start_mirror(
        upstream.url,
        builtin_upstreams=False,
        upstream=[
            {"host": "docker.io", "url": upstream.url},
            {"host": "ghcr.io", "url": other.url},
        ],
    )
    hub = await mirror.get("/v2/org/app/manifests/1", headers={"Accept": ALL_MANIFESTS})
    assert hub.status == 200
    assert hub.headers["Content-Type"] == mediatypes.DOCKER_MANIFEST
    message = await refused(mirror, "/v2/ghcr.io/org/app/manifests/1")
    assert "keeps that type" in message
    again = await mirror.get(f"/v2/org/app/manifests/{raw(data).digest}")
    assert again.headers["Content-Type"] == mediatypes.DOCKER_MANIFEST


async def test_a_head_with_an_off_list_type_is_settled_by_the_get(
    upstream: FakeRegistry, start_mirror: StartMirror, alpine: Manifest
) -> None:
    upstream.add_fault(
        Fault("header", method="HEAD", headers={"Content-Type": "text/html"}, times=None)
    )
    mirror = await start_mirror(upstream.url)
    resp = await mirror.head("/v2/library/alpine/manifests/3.19", headers={"Accept": ALL_MANIFESTS})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == alpine.media_type
    assert upstream.count(method="GET", kind="manifest") == 1


async def test_every_answer_says_nosniff(
    upstream: FakeRegistry, start_mirror: StartMirror, alpine: Manifest
) -> None:
    mirror = await start_mirror(upstream.url)
    for path in (
        "/v2/",
        "/v2/library/alpine/manifests/3.19",
        f"/v2/library/alpine/blobs/{alpine.layers[0].digest}",
        "/v2/library/nothing/manifests/1",
        "/api/status",
    ):
        resp = await mirror.get(path)
        assert resp.headers["X-Content-Type-Options"] == "nosniff", path


async def test_an_absurdly_large_manifest_is_refused_and_not_stored(
    upstream: FakeRegistry, start_mirror: StartMirror, data_dir: Path
) -> None:
    huge = b'{"schemaVersion": 2, "padding": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    upstream.push_image("evil/huge", "1", raw(huge))
    mirror = await start_mirror(upstream.url)
    message = await refused(mirror, "/v2/evil/huge/manifests/1")
    assert "over 4194304 bytes" in message
    assert stored_manifests(data_dir) == []
