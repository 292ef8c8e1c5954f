"""Prove the fake upstream behaves like Docker Hub over real HTTP.

The mirror's tests trust this fake; if it silently misbehaved (wrong digests,
lax auth, faults that never fire) those tests would pass for the wrong reason.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import io
import json
import tarfile
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from testkit.fakeupstream import (
    CHUNK_SIZE,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    SERVICE,
    FakeRegistry,
    Fault,
    Manifest,
    make_image,
    make_index,
    make_layer,
    random_layer,
    sha256_digest,
)

ALL_TYPES = f"{DOCKER_MANIFEST}, {DOCKER_MANIFEST_LIST}, {OCI_MANIFEST}, {OCI_INDEX}"

AMD64 = make_image(seed=1)
ARM64 = make_image(seed=1, arch="arm64")
INDEX = make_index([AMD64, ARM64])
OCI_IMAGE = make_image(seed=2, oci=True)
OCI_MULTI = make_index([OCI_IMAGE], oci=True)
BIG = make_image(layers=[random_layer(300_000, seed=7)], seed=3)


def _basic(user: str, password: str) -> str:
    """An Authorization header value for HTTP Basic."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def _token(
    session: aiohttp.ClientSession,
    hub: FakeRegistry,
    *scopes: str,
    auth: str | None = None,
) -> str:
    """Run the token dance for ``repository:<repo>:pull`` scopes and return the token."""
    params = [("service", SERVICE)] + [("scope", f"repository:{s}:pull") for s in scopes]
    headers = {"Authorization": auth} if auth else {}
    async with session.get(hub.auth_url, params=params, headers=headers) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == hub.token_expires_in
    assert body["issued_at"].endswith("Z")
    token: str = body["token"]
    return token


@pytest.fixture
async def hub() -> AsyncIterator[FakeRegistry]:
    """A started bearer-auth fake with a multi-arch, an OCI and a big image."""
    registry = FakeRegistry(ratelimit=(100, 100))
    registry.push_image("library/alpine", "latest", INDEX)
    registry.push_image("library/alpine", "oci", OCI_IMAGE)
    registry.push_image("library/alpine", "oci-multi", OCI_MULTI)
    registry.push_image("library/big", "latest", BIG)
    async with registry:
        yield registry


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session."""
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def auth(hub: FakeRegistry, session: aiohttp.ClientSession) -> dict[str, str]:
    """Headers with a valid pull token for library/alpine and library/big."""
    token = await _token(session, hub, "library/alpine", "library/big")
    return {"Authorization": f"Bearer {token}"}


def test_images_are_real_and_deterministic() -> None:
    """Layers are real gzip'd tars and every digest/diff_id/descriptor is consistent."""
    layer = make_layer({"a.txt": b"hello"})
    assert layer == make_layer({"a.txt": b"hello"})
    tar_bytes = gzip.decompress(layer.data)
    assert layer.diff_id == sha256_digest(tar_bytes)
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        member = tar.extractfile("a.txt")
        assert member is not None and member.read() == b"hello"

    manifest = json.loads(AMD64.data)
    config = json.loads(AMD64.config.data)
    assert manifest["config"]["digest"] == AMD64.config.digest == sha256_digest(AMD64.config.data)
    assert [d["digest"] for d in manifest["layers"]] == [b.digest for b in AMD64.layers]
    assert config["rootfs"]["diff_ids"] == [b.diff_id for b in AMD64.layers]
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    assert AMD64.digest != ARM64.digest != make_image(seed=9).digest
    assert AMD64.digest == make_image(seed=1).digest

    index = json.loads(INDEX.data)
    assert INDEX.media_type == DOCKER_MANIFEST_LIST and INDEX.blobs == ()
    assert [(m["digest"], m["platform"]["architecture"]) for m in index["manifests"]] == [
        (AMD64.digest, "amd64"),
        (ARM64.digest, "arm64"),
    ]
    assert json.loads(OCI_IMAGE.data)["layers"][0]["mediaType"].startswith("application/vnd.oci")
    assert make_index([OCI_IMAGE], oci=True).media_type == OCI_INDEX


def test_random_layer_is_fast_and_incompressible() -> None:
    """50 MB layers are cheap enough to use freely in big-blob tests."""
    started = time.monotonic()
    blob = random_layer(50 * 1024 * 1024, seed=1)
    assert time.monotonic() - started < 1.5
    assert blob.size == 50 * 1024 * 1024
    assert blob.data[:4096] == random_layer(4096, seed=1).data[:4096]
    assert len(gzip.compress(blob.data[:65536], compresslevel=1)) > 65536


async def test_token_flow(hub: FakeRegistry, session: aiohttp.ClientSession) -> None:
    """Challenge, anonymous token, per-repo scope (the library/ trap) and expiry."""
    async with session.get(f"{hub.url}/v2/") as resp:
        assert resp.status == 401
        assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        assert resp.headers["WWW-Authenticate"] == (
            f'Bearer realm="{hub.auth_url}",service="{SERVICE}"'
        )
    url = f"{hub.url}/v2/library/alpine/manifests/latest"
    async with session.get(url) as resp:
        assert resp.status == 401
        assert 'scope="repository:library/alpine:pull"' in resp.headers["WWW-Authenticate"]
        assert (await resp.json())["errors"][0]["code"] == "UNAUTHORIZED"

    good = await _token(session, hub, "library/alpine")
    async with session.get(url, headers={"Authorization": f"Bearer {good}"}) as resp:
        assert resp.status == 200
    async with session.get(f"{hub.url}/v2/", headers={"Authorization": f"Bearer {good}"}) as r:
        assert r.status == 200 and await r.json() == {}

    short = await _token(session, hub, "alpine")  # Hub grants the bare name, which is empty
    async with session.get(url, headers={"Authorization": f"Bearer {short}"}) as resp:
        assert resp.status == 401
        assert 'error="insufficient_scope"' in resp.headers["WWW-Authenticate"]

    hub.expire_tokens()
    async with session.get(url, headers={"Authorization": f"Bearer {good}"}) as resp:
        assert resp.status == 401
        assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert hub.count(kind="token") == 2


async def test_private_repo_needs_credentials(session: aiohttp.ClientSession) -> None:
    """Without anonymous pull only a known user's token works; a bad password is a 401."""
    async with FakeRegistry(users={"alice": "s3cret"}, anonymous_pull=False) as hub:
        hub.push_image("alice/app", "v1", AMD64)
        url = f"{hub.url}/v2/alice/app/manifests/v1"
        anonymous = await _token(session, hub, "alice/app")
        async with session.get(url, headers={"Authorization": f"Bearer {anonymous}"}) as resp:
            assert resp.status == 401
        params = {"service": SERVICE, "scope": "repository:alice/app:pull"}
        wrong = {"Authorization": _basic("alice", "nope")}
        async with session.get(hub.auth_url, params=params, headers=wrong) as resp:
            assert resp.status == 401
        token = await _token(session, hub, "alice/app", auth=_basic("alice", "s3cret"))
        async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
            assert resp.headers["Docker-Content-Digest"] == AMD64.digest


async def test_basic_and_no_auth_modes(session: aiohttp.ClientSession) -> None:
    """auth=basic challenges with Basic and checks users; auth=none lets everything through."""
    async with FakeRegistry(auth="basic", users={"bob": "pw"}) as hub:
        hub.push_image("bob/app", "v1", AMD64)
        url = f"{hub.url}/v2/bob/app/manifests/v1"
        async with session.get(url) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == 'Basic realm="fake"'
        async with session.get(url, headers={"Authorization": _basic("bob", "pw")}) as resp:
            assert resp.status == 200
    async with FakeRegistry(auth="none") as hub:
        hub.push_image("bob/app", "v1", AMD64)
        async with session.get(f"{hub.url}/v2/bob/app/manifests/v1") as resp:
            assert resp.status == 200


async def test_blob_redirect_and_cdn_rules(
    hub: FakeRegistry, session: aiohttp.ClientSession, auth: dict[str, str]
) -> None:
    """Blob GET is a 307 to another origin that refuses Authorization and unknown signatures."""
    layer = BIG.layers[0]
    url = f"{hub.url}/v2/library/big/blobs/{layer.digest}"
    async with session.head(url, headers=auth) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(layer.size)
        assert resp.headers["Docker-Content-Digest"] == layer.digest
    async with session.get(url, headers=auth, allow_redirects=False) as resp:
        assert resp.status == 307
        location = resp.headers["Location"]
    assert location.startswith(f"{hub.cdn_url}/blobs/{layer.digest}?")

    async with session.get(location, headers=auth) as resp:
        assert resp.status == 400
        assert await resp.text() == "authorization header not allowed"
    async with session.get(location) as resp:
        assert resp.status == 200
        assert sha256_digest(await resp.read()) == layer.digest
    async with session.get(location, headers={"Range": "bytes=10-19"}) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes 10-19/{layer.size}"
        assert await resp.read() == layer.data[10:20]
    forged = location.split("sig=")[0] + "sig=forged"
    async with session.get(forged) as resp:
        assert resp.status == 403
    hub.expire_cdn_urls()
    async with session.get(location) as resp:
        assert resp.status == 403
    assert hub.count(server="cdn") == 5
    assert [r.status for r in hub.filter_requests(server="cdn")] == [400, 200, 206, 403, 403]
    unknown = f"{hub.url}/v2/library/big/blobs/sha256:{'0' * 64}"
    async with session.get(unknown, headers=auth) as resp:
        assert resp.status == 404
        assert (await resp.json())["errors"][0]["code"] == "BLOB_UNKNOWN"


async def test_direct_blobs_with_range(session: aiohttp.ClientSession) -> None:
    """With redirect_blobs=False the registry serves bytes itself, honouring Range."""
    async with FakeRegistry(auth="none", redirect_blobs=False) as hub:
        hub.push_image("library/big", "latest", BIG)
        layer = BIG.layers[0]
        url = f"{hub.url}/v2/library/big/blobs/{layer.digest}"
        async with session.get(url) as resp:
            assert resp.status == 200 and await resp.read() == layer.data
        async with session.get(url, headers={"Range": f"bytes={layer.size - 5}-"}) as resp:
            assert resp.status == 206 and await resp.read() == layer.data[-5:]
        async with session.get(url, headers={"Range": f"bytes={layer.size}-"}) as resp:
            assert resp.status == 416
            assert resp.headers["Content-Range"] == f"bytes */{layer.size}"


async def test_manifest_content_negotiation(
    hub: FakeRegistry, session: aiohttp.ClientSession, auth: dict[str, str]
) -> None:
    """Index for list-aware clients, amd64 child otherwise, 404 for unaccepted OCI."""
    base = f"{hub.url}/v2/library/alpine/manifests"

    async def get(ref: str, accept: str | None, method: str = "GET") -> aiohttp.ClientResponse:
        headers = dict(auth)
        if accept is not None:
            headers["Accept"] = accept
        skip = () if accept is not None else ("Accept",)  # aiohttp would send */*
        url = f"{base}/{ref}"
        async with session.request(method, url, headers=headers, skip_auto_headers=skip) as resp:
            await resp.read()
            return resp

    def check(resp: aiohttp.ClientResponse, manifest: Manifest) -> None:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == manifest.media_type
        assert resp.headers["Docker-Content-Digest"] == manifest.digest
        assert resp.headers["Content-Length"] == str(manifest.size)
        assert resp.headers["Etag"] == f'"{manifest.digest}"'

    check(await get("latest", ALL_TYPES), INDEX)
    check(await get("latest", None), INDEX)
    check(await get("latest", "*/*"), AMD64)  # like distribution, */* does not name the list
    check(await get("latest", f"{DOCKER_MANIFEST};q=0.9"), AMD64)
    check(await get("latest", DOCKER_MANIFEST, method="HEAD"), AMD64)
    check(await get(ARM64.digest, DOCKER_MANIFEST), ARM64)
    check(await get("oci", f"{OCI_MANIFEST}, */*"), OCI_IMAGE)
    check(await get(OCI_IMAGE.digest, DOCKER_MANIFEST), OCI_IMAGE)
    check(await get("oci-multi", ALL_TYPES), OCI_MULTI)
    unaccepted = [("oci", f"{DOCKER_MANIFEST}, */*"), ("oci-multi", f"{OCI_MANIFEST}, */*")]
    for ref, accept in [*unaccepted, ("nope", None)]:
        resp = await get(ref, accept)
        assert resp.status == 404
    async with session.get(f"{base}/latest", headers={**auth, "Accept": DOCKER_MANIFEST}) as r:
        assert await r.read() == AMD64.data

    async with session.get(f"{base}/oci", headers={**auth, "Accept": DOCKER_MANIFEST}) as r:
        assert (await r.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    token = await _token(session, hub, "library/nothing")
    async with session.get(
        f"{hub.url}/v2/library/nothing/manifests/latest",
        headers={"Authorization": f"Bearer {token}"},
    ) as r:
        assert (await r.json())["errors"][0]["code"] == "NAME_UNKNOWN"


async def test_manifest_head_unsupported_and_no_digest(session: aiohttp.ClientSession) -> None:
    """The quirk switches: HEAD 405 and a missing Docker-Content-Digest."""
    async with FakeRegistry(auth="none", head_supported=False, send_digest_header=False) as hub:
        hub.push_image("library/alpine", "latest", AMD64)
        url = f"{hub.url}/v2/library/alpine/manifests/latest"
        async with session.head(url) as resp:
            assert resp.status == 405
        async with session.get(url) as resp:
            assert resp.status == 200
            assert "Docker-Content-Digest" not in resp.headers
            assert sha256_digest(await resp.read()) == AMD64.digest


async def test_tags_pagination(session: aiohttp.ClientSession) -> None:
    """n/last paging with a path-relative Link that drops other parameters."""
    async with FakeRegistry(auth="none") as hub:
        for tag in ("e", "a", "d", "b", "c"):
            hub.push_image("library/alpine", tag, AMD64)
        hub.delete_tag("library/alpine", "e")
        url = f"{hub.url}/v2/library/alpine/tags/list?n=2&ns=docker.io"
        pages = []
        while True:
            async with session.get(url) as resp:
                assert resp.status == 200
                pages.append((await resp.json())["tags"])
                link = resp.headers.get("Link")
            if link is None:
                break
            assert link.startswith("</v2/library/alpine/tags/list?") and "ns=" not in link
            url = hub.url + link[1 : link.index(">")]
        assert pages == [["a", "b"], ["c", "d"]]
        async with session.get(f"{hub.url}/v2/library/alpine/tags/list") as resp:
            assert await resp.json() == {"name": "library/alpine", "tags": ["a", "b", "c", "d"]}
        async with session.get(f"{hub.url}/v2/library/alpine/tags/list?n=x") as resp:
            assert resp.status == 400
            assert (await resp.json())["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"


async def test_status_faults(
    hub: FakeRegistry, session: aiohttp.ClientSession, auth: dict[str, str]
) -> None:
    """429 with extra headers, 401 despite a valid token, and times= consumption."""
    url = f"{hub.url}/v2/library/alpine/manifests/latest"
    hub.add_fault(Fault("status", status=429, headers={"Retry-After": "7"}, path_contains="/man"))
    fault_401 = Fault("status", status=401, path_contains="/manifests/")
    hub.add_fault(fault_401)
    async with session.get(url) as resp:  # unauthenticated probe does not consume faults
        assert resp.status == 401
    async with session.get(url, headers=auth) as resp:
        assert resp.status == 429 and resp.headers["Retry-After"] == "7"
        assert (await resp.json())["errors"][0]["code"] == "TOOMANYREQUESTS"
    async with session.get(url, headers=auth) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith(f'Bearer realm="{hub.auth_url}"')
        assert 'scope="repository:library/alpine:pull"' in resp.headers["WWW-Authenticate"]
    async with session.get(url, headers=auth) as resp:
        assert resp.status == 200
    assert fault_401.hits == 1 and fault_401.exhausted
    hub.add_fault(Fault("status", status=503, server="auth", times=None))
    for _ in range(2):
        async with session.get(hub.auth_url) as resp:
            assert resp.status == 503
    hub.clear_faults()
    hub.add_fault(Fault("status", status=503, path_contains="/v2/", before_auth=True))
    async with session.get(f"{hub.url}/v2/") as resp:
        assert resp.status == 503
    assert [r.fault for r in hub.filter_requests(kind="manifest")] == [
        None,
        "status",
        "status",
        None,
    ]


async def test_slow_fault(
    hub: FakeRegistry, session: aiohttp.ClientSession, auth: dict[str, str]
) -> None:
    """A slow fault delays the headers and paces body chunks; client timeouts trip on it."""
    url = f"{hub.url}/v2/library/alpine/manifests/latest"
    hub.add_fault(Fault("slow", delay=0.3, method="GET", path_contains="/manifests/"))
    started = time.monotonic()
    async with session.get(url, headers=auth) as resp:
        assert resp.status == 200
    assert time.monotonic() - started >= 0.3

    hub.add_fault(Fault("slow", delay=5, path_contains="/manifests/"))
    with pytest.raises(asyncio.TimeoutError):
        async with session.get(url, headers=auth, timeout=aiohttp.ClientTimeout(total=0.2)):
            pass

    layer = BIG.layers[0]  # 300 kB = 5 chunks, so 4 pauses
    async with session.get(
        f"{hub.url}/v2/library/big/blobs/{layer.digest}", headers=auth, allow_redirects=False
    ) as resp:
        location = resp.headers["Location"]
    hub.add_fault(Fault("slow", server="cdn", chunk_delay=0.05))
    started = time.monotonic()
    async with session.get(location) as resp:
        assert sha256_digest(await resp.read()) == layer.digest
    assert time.monotonic() - started >= 0.2


async def test_truncate_corrupt_and_drop(
    hub: FakeRegistry, session: aiohttp.ClientSession, auth: dict[str, str]
) -> None:
    """Body faults break transfers the way a flaky CDN does; drop sends nothing at all."""
    layer = BIG.layers[0]
    blob_url = f"{hub.url}/v2/library/big/blobs/{layer.digest}"

    hub.add_fault(Fault("truncate", server="cdn"))
    async with session.get(blob_url, headers=auth, allow_redirects=False) as resp:
        location = resp.headers["Location"]
    async with session.get(location) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(layer.size)
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()

    hub.add_fault(Fault("corrupt", server="cdn"))
    async with session.get(location) as resp:
        data = await resp.read()
    assert len(data) == layer.size and sha256_digest(data) != layer.digest
    assert sum(a != b for a, b in zip(data, layer.data, strict=True)) == 16

    manifest_url = f"{hub.url}/v2/library/alpine/manifests/{AMD64.digest}"
    hub.add_fault(Fault("corrupt", path_contains="/manifests/"))
    async with session.head(manifest_url, headers=auth) as resp:  # no body: not consumed
        assert resp.status == 200
    async with session.get(manifest_url, headers=auth) as resp:
        assert hashlib.sha256(await resp.read()).hexdigest() != AMD64.digest[7:]

    # aiohttp silently retries an idempotent request once after a disconnect, so drop twice.
    hub.add_fault(Fault("drop", path_contains="/blobs/", times=2))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with session.get(blob_url, headers=auth):
            pass
    async with session.get(location) as resp:
        assert sha256_digest(await resp.read()) == layer.digest
    dropped = hub.filter_requests(kind="blob")[-2:]
    assert [(r.status, r.fault) for r in dropped] == [(0, "drop"), (0, "drop")]


async def test_request_counting_and_ratelimit(
    hub: FakeRegistry, session: aiohttp.ClientSession, auth: dict[str, str]
) -> None:
    """Counts split by server/kind/method; GETs spend the rate limit, HEADs do not."""
    hub.reset_counts()
    hub.ratelimit_remaining = 3
    url = f"{hub.url}/v2/library/alpine/manifests/latest"
    remaining = []
    for method in ("HEAD", "GET", "HEAD", "GET", "GET", "GET"):
        async with session.request(method, url, headers=auth) as resp:
            remaining.append((resp.status, resp.headers.get("ratelimit-remaining")))
    assert remaining == [
        (200, "3;w=21600"),
        (200, "2;w=21600"),
        (200, "2;w=21600"),
        (200, "1;w=21600"),
        (200, "0;w=21600"),
        (429, "0;w=21600"),
    ]
    assert hub.count(kind="manifest") == 6
    assert hub.count(kind="manifest", method="HEAD") == 2
    assert hub.count(kind="manifest", method="get", path="/v2/library/alpine/manifests/latest") == 4
    assert hub.count(server="auth") == 0
    recorded = hub.requests[0]
    assert recorded.headers["authorization"] == auth["Authorization"]
    assert (recorded.server, recorded.kind, recorded.status) == ("registry", "manifest", 200)
    hub.reset_counts()
    assert hub.count() == 0


async def test_a_test_can_wait_for_a_request_to_arrive(
    hub: FakeRegistry, session: aiohttp.ClientSession, auth: dict[str, str]
) -> None:
    """Requests are recorded on arrival, before a fault's delay: a test acts while the
    client still waits for the answer."""
    hub.reset_counts()
    hub.add_fault(Fault("slow", delay=5, path_contains="/manifests/"))
    url = f"{hub.url}/v2/library/alpine/manifests/latest"
    slow = asyncio.create_task(session.get(url, headers=auth))
    arrived = await hub.wait_for_request(kind="manifest", method="GET", within=2)
    assert arrived.path == "/v2/library/alpine/manifests/latest"
    assert not slow.done()
    slow.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await slow
    assert await hub.wait_for_request(kind="manifest") is arrived  # already there: at once
    with pytest.raises(AssertionError, match=r"no request .*'kind': 'tags'.* within 0\.05 s"):
        await hub.wait_for_request(kind="tags", within=0.05)


async def test_a_gate_holds_a_body_mid_way_until_released(
    hub: FakeRegistry, session: aiohttp.ClientSession, auth: dict[str, str]
) -> None:
    """A gate stops an answer after exactly `at` bytes and tells the test, which lets the
    rest go when it is ready; it applies to as many answers as it is told (one here)."""
    layer = BIG.layers[0]
    url = f"{hub.url}/v2/library/big/blobs/{layer.digest}"
    at = CHUNK_SIZE + 1000  # inside the second chunk
    gate = hub.hold_body(at, path_contains=layer.digest)
    async with session.get(url, headers=auth) as resp:  # redirected to the CDN
        head = await resp.content.readexactly(at)
        await gate.wait_reached(within=5)
        assert gate.held == 1 and not resp.content.is_eof()
        gate.release()
        rest = await resp.content.read()
    assert head + rest == layer.data
    assert gate.held == 0

    async with session.get(url, headers=auth) as resp:  # spent: not held
        assert sha256_digest(await resp.read()) == layer.digest
    with pytest.raises(AssertionError, match="no answer reached the gate"):
        await hub.hold_body(0, path_contains=layer.digest).wait_reached(within=0.05)


async def test_a_gate_holds_an_answer_without_a_body_before_its_headers(
    hub: FakeRegistry, session: aiohttp.ClientSession, auth: dict[str, str]
) -> None:
    """A HEAD has no body to stop in: the gate holds the whole answer (a revalidation in
    flight, for as long as the test needs)."""
    url = f"{hub.url}/v2/library/big/manifests/latest"
    gate = hub.hold_body(0, server="registry", path_contains="/manifests/")
    head = asyncio.ensure_future(session.head(url, headers=auth))
    await gate.wait_reached(within=5)
    assert gate.held == 1 and not head.done()
    gate.release()
    async with await head as resp:
        assert resp.status == 200
        assert resp.headers["Docker-Content-Digest"] == BIG.digest
