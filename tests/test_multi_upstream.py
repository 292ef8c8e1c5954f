"""One mirror for several registries: routing by `ns=`, by path prefix and by default; hosts
nobody configured are never contacted; caches, tokens and credentials kept per upstream."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from testkit.clock import FakeClock
from testkit.fakeupstream import FakeRegistry, Manifest, make_image, make_layer
from testkit.tls import make_private_ca
from tests.clients import ALL_MANIFESTS, pull_like_docker
from tests.conftest import (
    Client,
    StartMirror,
    answered,
    files_under,
)
from tests.connections import ConnectionCounter

BASE = make_layer({"etc/os-release": b"shared base layer\n"})
HUB_APP = make_image(layers=[BASE, make_layer({"app": b"the Docker Hub org/app\n"})])
GHCR_APP = make_image(layers=[BASE, make_layer({"app": b"the ghcr.io org/app\n"})])


def tables(hub: FakeRegistry, ghcr: FakeRegistry, **ghcr_keys: Any) -> list[dict[str, Any]]:
    """`upstream` tables: only these two registries (the built-ins switched off too)."""
    return [
        {"host": "docker.io", "url": hub.url},
        {"host": "ghcr.io", "url": ghcr.url, **ghcr_keys},
    ]


@pytest.fixture
async def ghcr() -> AsyncIterator[FakeRegistry]:
    async with FakeRegistry() as registry:
        yield registry


@pytest.fixture
def same_name(upstream: FakeRegistry, ghcr: FakeRegistry) -> None:
    """`org/app:1` on both registries, different images sharing a base layer."""
    upstream.push_image("org/app", "1", HUB_APP)
    ghcr.push_image("org/app", "1", GHCR_APP)


@pytest.fixture
async def two(upstream: FakeRegistry, ghcr: FakeRegistry, start_mirror: StartMirror) -> Client:
    """A mirror serving docker.io (the `upstream` fixture) and ghcr.io."""
    return await start_mirror(
        upstream.url, builtin_upstreams=False, upstream=tables(upstream, ghcr)
    )


async def digest_of(mirror: Client, path: str) -> str:
    resp = await mirror.head(path, headers={"Accept": ALL_MANIFESTS})
    assert resp.status == 200, await resp.text()
    return resp.headers["Docker-Content-Digest"]


# --- routing --------------------------------------------------------------------------------


async def test_ns_names_the_registry(
    two: Client, upstream: FakeRegistry, ghcr: FakeRegistry, same_name: None
) -> None:
    assert await digest_of(two, "/v2/org/app/manifests/1?ns=ghcr.io") == GHCR_APP.digest
    assert await digest_of(two, "/v2/org/app/manifests/1?ns=docker.io") == HUB_APP.digest
    resp = await two.get(f"/v2/org/app/blobs/{GHCR_APP.layers[1].digest}?ns=ghcr.io")
    assert await resp.read() == GHCR_APP.layers[1].data
    assert answered(ghcr, kind="manifest") == 1
    assert answered(upstream, kind="manifest") == 1


async def test_a_path_prefix_names_the_registry(
    two: Client, upstream: FakeRegistry, ghcr: FakeRegistry, same_name: None
) -> None:
    await pull_like_docker(two, "ghcr.io/org/app", "1")
    assert answered(ghcr, kind="blob", method="GET") == len(GHCR_APP.blobs)
    assert upstream.requests == []
    await pull_like_docker(two, "docker.io/org/app", "1")
    assert await digest_of(two, "/v2/docker.io/org/app/manifests/1") == HUB_APP.digest


async def test_without_ns_or_prefix_the_registry_is_docker_io(
    two: Client, upstream: FakeRegistry, ghcr: FakeRegistry, same_name: None, alpine: Manifest
) -> None:
    assert await digest_of(two, "/v2/org/app/manifests/1") == HUB_APP.digest
    # ...with Docker Hub's library/ rule, also behind the docker.io prefix.
    assert await digest_of(two, "/v2/alpine/manifests/3.19") == alpine.digest
    assert await digest_of(two, "/v2/docker.io/alpine/manifests/3.19") == alpine.digest
    assert ghcr.requests == []


async def test_the_library_rule_is_docker_hubs_only(
    two: Client, ghcr: FakeRegistry, alpine: Manifest
) -> None:
    ghcr.push_image("alpine", "3.19", alpine)
    assert await digest_of(two, "/v2/ghcr.io/alpine/manifests/3.19") == alpine.digest
    assert {r.path for r in ghcr.filter_requests(kind="manifest")} == {"/v2/alpine/manifests/3.19"}


async def test_ping_and_tag_lists_work_per_registry(
    two: Client, ghcr: FakeRegistry, same_name: None
) -> None:
    assert (await two.get("/v2/?ns=ghcr.io")).status == 200
    ghcr.push_image("org/app", "2", make_image(seed=2))
    resp = await two.get("/v2/ghcr.io/org/app/tags/list?n=1")
    assert resp.status == 200
    assert (await resp.json())["tags"] == ["1"]
    # The next page stays behind the same prefix, on the mirror.
    assert resp.headers["Link"] == '</v2/ghcr.io/org/app/tags/list?n=1&last=1>; rel="next"'


# --- OCI-Namespace -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v2/org/app/manifests/1?ns=ghcr.io", 200),
        ("HEAD", "/v2/org/app/manifests/1?ns=ghcr.io", 200),
        ("GET", f"/v2/org/app/blobs/{GHCR_APP.layers[1].digest}?ns=ghcr.io", 200),
        ("GET", "/v2/org/app/tags/list?ns=ghcr.io", 200),
        ("GET", "/v2/?ns=ghcr.io", 200),
        ("GET", "/v2/_catalog?ns=ghcr.io", 200),
        ("GET", "/v2/org/app/manifests/404?ns=ghcr.io", 404),  # errors say it too
        ("GET", "/v2/org/nothing/tags/list?ns=ghcr.io", 404),
    ],
)
async def test_a_request_routed_by_ns_says_so_in_oci_namespace(
    two: Client, same_name: None, method: str, path: str, status: int
) -> None:
    """The spec: a registry that uses `ns` to scope the request SHOULD return its value in
    `OCI-Namespace`."""
    resp = await two.request(method, path, headers={"Accept": ALL_MANIFESTS})
    assert resp.status == status
    assert resp.headers["OCI-Namespace"] == "ghcr.io"


async def test_oci_namespace_echoes_ns_as_sent(two: Client, same_name: None) -> None:
    resp = await two.head("/v2/org/app/manifests/1?ns=GHCR.io", headers={"Accept": ALL_MANIFESTS})
    assert resp.status == 200
    assert resp.headers["OCI-Namespace"] == "GHCR.io"


@pytest.mark.parametrize(
    "path",
    [
        "/v2/org/app/manifests/1",  # docker.io by default
        "/v2/ghcr.io/org/app/manifests/1",  # a path prefix
        "/v2/org/app/manifests/1?ns=quay.io",  # refused: not served here
        "/v2/Org/app/manifests/1?ns=ghcr.io",  # refused: an invalid name
        "/v2/?ns=quay.io",
    ],
)
async def test_no_oci_namespace_without_a_request_routed_by_ns(
    two: Client, same_name: None, path: str
) -> None:
    resp = await two.head(path, headers={"Accept": ALL_MANIFESTS})
    assert "OCI-Namespace" not in resp.headers


# --- hosts nobody configured ----------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v2/org/app/manifests/1?ns={host}",
        "/v2/org/app/blobs/sha256:" + "a" * 64 + "?ns={host}",
        "/v2/org/app/tags/list?ns={host}",
        "/v2/?ns={host}",
        "/v2/_catalog?ns={host}",
        "/v2/{host}/org/app/manifests/1",
        "/v2/{host}/org/app/blobs/sha256:" + "a" * 64,
        "/v2/{host}/org/app/tags/list",
    ],
)
async def test_an_unconfigured_registry_is_refused_without_any_connection(
    two: Client, path: str
) -> None:
    async with ConnectionCounter() as elsewhere:
        resp = await two.get(path.format(host=elsewhere.address))
        assert await elsewhere.settle() == 0
    assert resp.status == 404
    error = (await resp.json())["errors"][0]
    assert error["code"] == "NAME_UNKNOWN"
    assert error["message"] == (
        f"registry '{elsewhere.address}' is not served by this mirror; it serves docker.io, ghcr.io"
    )


async def test_a_disabled_built_in_registry_is_refused(
    upstream: FakeRegistry, start_mirror: StartMirror
) -> None:
    mirror = await start_mirror(
        upstream.url,
        upstream=[
            {"host": "docker.io", "url": upstream.url},
            {"host": "quay.io", "enabled": False},
        ],
    )
    resp = await mirror.get("/v2/quay.io/org/app/manifests/1")
    assert resp.status == 404
    message = (await resp.json())["errors"][0]["message"]
    assert "'quay.io' is not served" in message
    assert "ghcr.io" in message  # the built-ins that are still served are named


async def test_a_mirror_without_docker_io_refuses_unprefixed_names(
    ghcr: FakeRegistry, start_mirror: StartMirror, same_name: None
) -> None:
    mirror = await start_mirror(
        ghcr.url, builtin_upstreams=False, upstream=[{"host": "ghcr.io", "url": ghcr.url}]
    )
    resp = await mirror.get("/v2/org/app/manifests/1")
    assert resp.status == 404
    assert (await resp.json())["errors"][0]["message"] == (
        "registry docker.io is not served by this mirror; it serves ghcr.io"
    )
    assert await digest_of(mirror, "/v2/org/app/manifests/1?ns=ghcr.io") == GHCR_APP.digest


async def test_a_host_like_component_that_is_not_a_host_is_an_invalid_name(two: Client) -> None:
    resp = await two.get("/v2/bad..host/org/app/manifests/1")
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["code"] == "NAME_INVALID"


# --- isolation ------------------------------------------------------------------------------


async def test_the_same_name_on_two_registries_never_mixes_but_shared_blobs_are_stored_once(
    two: Client,
    upstream: FakeRegistry,
    ghcr: FakeRegistry,
    same_name: None,
    data_dir: Path,
) -> None:
    await pull_like_docker(two, "docker.io/org/app", "1")
    await pull_like_docker(two, "ghcr.io/org/app", "1")
    # The base layer both images share came from Docker Hub; ghcr.io was never asked for it.
    assert answered(ghcr, kind="blob", path=f"/v2/org/app/blobs/{BASE.digest}") == 0
    blob_files = [p for p in files_under(data_dir / "blobs") if BASE.digest.split(":")[1] in p]
    assert len(blob_files) == 1

    upstream.reset_counts()
    ghcr.reset_counts()
    for _ in range(2):  # fresh tag records, one per registry: nobody is asked again
        assert await digest_of(two, "/v2/org/app/manifests/1?ns=ghcr.io") == GHCR_APP.digest
        assert await digest_of(two, "/v2/org/app/manifests/1?ns=docker.io") == HUB_APP.digest
    assert upstream.requests == [] and ghcr.requests == []


async def test_freshness_is_per_registry(
    upstream: FakeRegistry, ghcr: FakeRegistry, start_mirror: StartMirror, same_name: None
) -> None:
    clock = FakeClock()
    mirror = await start_mirror(
        upstream.url,
        clock=clock,
        tag_ttl=300,
        builtin_upstreams=False,
        upstream=tables(upstream, ghcr, tag_ttl=10),
    )
    await digest_of(mirror, "/v2/ghcr.io/org/app/manifests/1")
    await digest_of(mirror, "/v2/org/app/manifests/1")
    upstream.reset_counts()
    ghcr.reset_counts()
    clock.advance(60)
    await digest_of(mirror, "/v2/ghcr.io/org/app/manifests/1")
    await digest_of(mirror, "/v2/org/app/manifests/1")
    assert answered(ghcr, kind="manifest", method="HEAD") == 1  # past its 10 s
    assert upstream.requests == []  # within docker.io's 300 s


async def test_the_catalog_names_repositories_as_they_are_pulled(
    two: Client, same_name: None, alpine: Manifest
) -> None:
    for path in ("org/app/manifests/1?ns=ghcr.io", "org/app/manifests/1", "alpine/manifests/3.19"):
        assert (await two.get(f"/v2/{path}")).status == 200
    everything = await (await two.get("/v2/_catalog")).json()
    assert everything == {"repositories": ["ghcr.io/org/app", "library/alpine", "org/app"]}
    ghcr_only = await (await two.get("/v2/_catalog?ns=ghcr.io")).json()
    assert ghcr_only == {"repositories": ["org/app"]}
    page = await two.get("/v2/_catalog?n=1&last=ghcr.io/org/app")
    assert await page.json() == {"repositories": ["library/alpine"]}
    # Pages are read per upstream from the store and merged in the names clients see.
    first = await two.get("/v2/_catalog?n=1")
    assert await first.json() == {"repositories": ["ghcr.io/org/app"]}
    assert first.headers["Link"] == '</v2/_catalog?n=1&last=ghcr.io%2Forg%2Fapp>; rel="next"'
    for last, rest in [
        ("ghcr.io", ["ghcr.io/org/app", "library/alpine", "org/app"]),
        ("ghcr.io/org/app", ["library/alpine", "org/app"]),
        ("ghcr.io/zzz/z", ["library/alpine", "org/app"]),
        ("library/alpine", ["org/app"]),
        ("org/app", []),
    ]:
        page = await two.get(f"/v2/_catalog?last={last}")
        assert await page.json() == {"repositories": rest}, last


# --- credentials and tokens -----------------------------------------------------------------


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_each_registry_gets_only_its_own_credentials_and_tokens(
    start_mirror: StartMirror,
) -> None:
    async with (
        FakeRegistry(users={"hubbot": "hub-secret"}, anonymous_pull=False) as hub,
        FakeRegistry(users={"ghcrbot": "ghcr-secret"}, anonymous_pull=False) as ghcr,
    ):
        hub.push_image("org/app", "1", HUB_APP)
        ghcr.push_image("org/app", "1", GHCR_APP)
        mirror = await start_mirror(
            hub.url,
            builtin_upstreams=False,
            upstream=[
                {
                    "host": "docker.io",
                    "url": hub.url,
                    "username": "hubbot",
                    "password": "hub-secret",
                    "anonymous_clients_use_credentials": True,
                },
                {
                    "host": "ghcr.io",
                    "url": ghcr.url,
                    "username": "ghcrbot",
                    "password": "ghcr-secret",
                    "anonymous_clients_use_credentials": True,
                },
            ],
        )
        await pull_like_docker(mirror, "docker.io/org/app", "1")
        await pull_like_docker(mirror, "ghcr.io/org/app", "1")

        for registry, own, other in (
            (hub, basic("hubbot", "hub-secret"), basic("ghcrbot", "ghcr-secret")),
            (ghcr, basic("ghcrbot", "ghcr-secret"), basic("hubbot", "hub-secret")),
        ):
            token_requests = registry.filter_requests(server="auth")
            assert len(token_requests) == 1  # one token for org/app, reused for the pull
            assert token_requests[0].headers["Authorization"] == own
            sent = [r.headers.get("Authorization", "") for r in registry.requests]
            assert other not in sent
            assert all(
                "Authorization" not in r.headers for r in registry.filter_requests(server="cdn")
            )
        hub_tokens = bearer_tokens(hub)
        ghcr_tokens = bearer_tokens(ghcr)
        assert hub_tokens and ghcr_tokens
        assert not hub_tokens & ghcr_tokens  # a token from one never went to the other


def bearer_tokens(registry: FakeRegistry) -> set[str]:
    return {
        r.headers["Authorization"].removeprefix("Bearer ")
        for r in registry.filter_requests(server="registry")
        if r.headers.get("Authorization", "").startswith("Bearer ")
    }


# --- TLS ------------------------------------------------------------------------------------


async def test_an_https_upstream_with_a_private_ca(
    tmp_path: Path, start_mirror: StartMirror, alpine: Manifest
) -> None:
    ca = make_private_ca(tmp_path / "ca")
    async with FakeRegistry(tls=ca.server_context()) as private:
        private.push_image("team/app", "1", alpine)

        def config(**keys: Any) -> list[dict[str, Any]]:
            return [{"host": "registry.example.com", "url": private.url, **keys}]

        untrusting = await start_mirror(private.url, upstream=config())
        resp = await untrusting.get("/v2/registry.example.com/team/app/manifests/1")
        assert resp.status == 502
        message = (await resp.json())["errors"][0]["message"]
        assert "TLS certificate the mirror does not trust" in message
        assert "ca_file" in message

        trusting = await start_mirror(private.url, upstream=config(ca_file=str(ca.ca_file)))
        await pull_like_docker(trusting, "registry.example.com/team/app", "1")

        lab = await start_mirror(private.url, upstream=config(insecure=True))
        await pull_like_docker(lab, "registry.example.com/team/app", "1")
