"""Where an upstream's redirects may send the mirror: http(s) only, never to loopback,
link-local or private addresses unless the upstream itself is on such a network, checked on
the address actually connected to; and what a redirect fetched is verified all the same."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from mirror.config import UpstreamSettings
from mirror.upstream.addresses import AddressRefused, GuardedResolver, network_of
from mirror.upstream.client import UpstreamClient, UpstreamError
from mirror.upstream.options import ClientOptions
from testkit.fakeupstream import DOCKER_MANIFEST, FakeRegistry, Fault, Manifest
from tests.clients import pull_like_docker
from tests.conftest import Client, StartMirror

ACCEPT = DOCKER_MANIFEST


class StubResolver(AbstractResolver):
    """Answers names from a table; a list of answers is given out one per lookup (a name
    that resolves differently each time, as in DNS rebinding)."""

    def __init__(self, answers: Mapping[str, str | list[str]]) -> None:
        self._answers = {k: [v] if isinstance(v, str) else list(v) for k, v in answers.items()}
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        answers = self._answers[host]
        address = answers.pop(0) if len(answers) > 1 else answers[0]
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": family,
                "proto": 0,
                "flags": 0,
            }
        ]

    async def close(self) -> None:
        pass


def redirect_manifests(upstream: FakeRegistry, location: str) -> None:
    upstream.add_fault(
        Fault(
            "status",
            status=307,
            headers={"Location": location},
            path_contains="/manifests/",
            times=None,
        )
    )


async def manifest_error(mirror: Client) -> tuple[int, str]:
    resp = await mirror.get("/v2/library/alpine/manifests/3.19")
    body = await resp.json()
    return resp.status, body["errors"][0]["message"]


# --- what an upstream on loopback may not redirect to ----------------------------------------


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254, a link-local address"),
        ("http://[::ffff:169.254.169.254]/", "::ffff:169.254.169.254, a link-local address"),
        ("http://10.0.0.1:9/v2/", "10.0.0.1, a private address"),
        ("http://100.64.0.1/", "100.64.0.1, a private address"),
        ("http://0.0.0.0:80/", "0.0.0.0, an unspecified address"),
        ("https://[fe80::1]/", "fe80::1, a link-local address"),
    ],
)
async def test_redirects_to_other_kinds_of_network_are_refused_with_a_502(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest, location: str, shown: str
) -> None:
    redirect_manifests(upstream, location)
    status, message = await manifest_error(mirror)
    assert status == 502
    assert message.startswith(f"upstream {upstream.url.split('//')[1]} sent the mirror to {shown}")
    assert message.endswith("network itself: refused")


async def test_a_loopback_upstream_may_redirect_to_loopback(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest
) -> None:
    """The fake upstream's CDN is on 127.0.0.1, like the registry: blobs come from there."""
    resp = await mirror.get(f"/v2/library/alpine/blobs/{alpine.blobs[0].digest}")
    assert resp.status == 200
    assert upstream.count(server="cdn") == 1


# --- the guard itself, for an upstream on a public address ----------------------------------


async def test_a_public_upstream_is_not_let_near_loopback_private_or_metadata_addresses() -> None:
    guard = GuardedResolver(
        "registry.example",
        StubResolver(
            {
                "registry.example": "93.184.216.34",
                "cdn.example": "93.184.216.35",
                "sneaky.example": "127.0.0.1",
                "mapped.example": "::ffff:10.1.2.3",
                "metadata.example": "169.254.169.254",
            }
        ),
    )
    assert (await guard.resolve("cdn.example", 443))[0]["host"] == "93.184.216.35"
    for name in ("sneaky.example", "mapped.example", "metadata.example"):
        with pytest.raises(AddressRefused, match=f"{name} \\("):
            await guard.resolve(name, 443)
    for address in ("127.0.0.1", "::1", "10.0.0.1", "192.168.1.1", "fd00::1"):
        with pytest.raises(AddressRefused):
            await guard.check_literal(address)
    await guard.check_literal("93.184.216.36")


async def test_every_connection_is_checked_so_a_name_cannot_rebind_to_loopback() -> None:
    resolver = StubResolver(
        {"registry.example": "93.184.216.34", "cdn.example": ["93.184.216.35", "127.0.0.1"]}
    )
    guard = GuardedResolver("registry.example", resolver)
    await guard.resolve("cdn.example", 443)  # public the first time: connected to
    with pytest.raises(AddressRefused, match="loopback"):
        await guard.resolve("cdn.example", 443)  # loopback at the next connect: refused


async def test_the_upstreams_own_host_may_be_anywhere_and_sets_what_else_is_allowed() -> None:
    guard = GuardedResolver("harbor.lan", StubResolver({"harbor.lan": "10.0.0.5"}))
    assert (await guard.resolve("harbor.lan", 443))[0]["host"] == "10.0.0.5"
    await guard.check_literal("10.0.0.6")  # its storage on the same kind of network
    with pytest.raises(AddressRefused, match="a loopback address"):
        await guard.check_literal("127.0.0.1")


def test_ipv4_mapped_and_ipv6_forms_count_as_what_they_are() -> None:
    assert network_of("::ffff:127.0.0.1") == "loopback"
    assert network_of("::1") == "loopback"
    assert network_of("fc00::1") == "private"
    assert network_of("172.31.255.255") == "private"
    assert network_of("172.32.0.1") == "public"
    assert network_of("fe80::1%eth0") == "link-local"


async def test_a_redirect_to_a_name_is_checked_where_it_connects(
    upstream: FakeRegistry, alpine: Manifest
) -> None:
    """Through the client's real connections: a redirect to a name that resolves to a
    link-local address is refused at connect time, with no request sent."""
    resolver = StubResolver({"metadata.example": "169.254.169.254"})
    client = UpstreamClient(
        UpstreamSettings(host="docker.io", url=upstream.url),
        ClientOptions(resolver=resolver, connect_timeout=2.0),
    )
    try:
        redirect_manifests(upstream, "http://metadata.example/latest/")
        with pytest.raises(UpstreamError, match=r"metadata.example \(169.254.169.254\)"):
            await client.get_manifest("library/alpine", "3.19", ACCEPT)
        assert resolver.lookups == ["metadata.example"]
    finally:
        await client.close()


# --- what a redirect fetched is verified all the same ---------------------------------------


@asynccontextmanager
async def other_origin(body: bytes) -> AsyncIterator[tuple[str, list[web.Request]]]:
    """A server on another port (another origin) that answers every GET with `body`."""
    seen: list[web.Request] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request)
        return web.Response(body=body, content_type=DOCKER_MANIFEST)

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", seen
    finally:
        await runner.cleanup()


async def test_a_manifest_by_digest_redirected_elsewhere_is_verified_against_its_digest(
    start_mirror: StartMirror, upstream: FakeRegistry, alpine: Manifest
) -> None:
    wrong = alpine.data.replace(b"schemaVersion", b"schemaversion")
    async with other_origin(wrong) as (origin, seen):
        mirror = await start_mirror(upstream.url, negative_ttl=0)
        redirect_manifests(upstream, f"{origin}/manifest")
        resp = await mirror.get(f"/v2/library/alpine/manifests/{alpine.digest}")
        assert resp.status == 502
        assert "does not match" in (await resp.json())["errors"][0]["message"]
        assert seen and all("Authorization" not in r.headers for r in seen)

        upstream.clear_faults()  # nothing wrong was kept: the real manifest is fetched now
        resp = await mirror.get(f"/v2/library/alpine/manifests/{alpine.digest}")
        assert resp.status == 200
        assert await resp.read() == alpine.data


# --- a registry that redirects manifests to another registry (registry.k8s.io) --------------


async def test_a_manifest_redirected_to_another_registry_gets_that_registrys_anonymous_token(
    start_mirror: StartMirror, alpine: Manifest
) -> None:
    """registry.k8s.io sends manifest requests to a regional Artifact Registry, under another
    name, which challenges the mirror itself: it gets an anonymous token from that
    registry's token service, and the upstream's credentials stay with the upstream."""
    async with FakeRegistry(users={"bot": "pw"}) as hub, FakeRegistry() as regional:
        hub.push_image("library/alpine", "3.19", alpine)
        regional.push_image("k8s-artifacts-prod/images/alpine", "3.19", alpine)
        location = f"{regional.url}/v2/k8s-artifacts-prod/images/alpine/manifests/3.19"
        hub.add_fault(
            Fault(
                "status",
                status=307,
                headers={"Location": location},
                path_contains="/library/alpine/manifests/3.19",
                times=None,
                before_auth=True,
            )
        )
        table = [
            {
                "host": "docker.io",
                "url": hub.url,
                "username": "bot",
                "password": "pw",
                "anonymous_clients_use_credentials": True,
            }
        ]
        mirror = await start_mirror(hub.url, upstream=table)
        await pull_like_docker(mirror, "library/alpine", "3.19")

        tokens = regional.filter_requests(server="auth")
        assert [r.query["scope"] for r in tokens] == [
            "repository:k8s-artifacts-prod/images/alpine:pull"
        ]
        assert all("Authorization" not in r.headers for r in tokens)
        manifests = regional.filter_requests(kind="manifest")
        assert manifests[-1].status == 200
        assert manifests[-1].headers["Authorization"].startswith("Bearer ")
        assert all("Basic" not in r.headers.get("Authorization", "") for r in manifests)


async def test_a_redirect_target_that_wants_credentials_is_refused_by_name(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest
) -> None:
    async with FakeRegistry(auth="basic", users={"someone": "pw"}) as other:
        redirect_manifests(upstream, f"{other.url}/v2/library/alpine/manifests/3.19")
        status, message = await manifest_error(mirror)
        other_host = other.url.split("//")[1]
    assert status == 403
    assert f"redirected to {other_host}, which requires authentication" in message
    assert "never sent to another host" in message
