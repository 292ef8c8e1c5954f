"""`client_credentials = "passthrough"`: each client pulls with its own registry credentials,
the upstream decides what each may see, content is stored once, and a cached object of one
user's private repository never reaches another user."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator

import pytest

from testkit.clock import FakeClock
from testkit.fakeupstream import FakeRegistry, Manifest, make_image, make_referrer
from tests.clients import ALL_MANIFESTS
from tests.conftest import Client, StartMirror, sha256

USERS = {"alice": "alice-secret", "bob": "bob-secret"}
ALICE_APP = make_image(seed=31)
BOB_APP = make_image(seed=32)
SHARED = make_image(seed=33)


def basic(user: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
async def private() -> AsyncIterator[FakeRegistry]:
    """A registry where alice/app is alice's, bob/app is bob's and team/shared is both's."""
    async with FakeRegistry(
        users=USERS,
        anonymous_pull=False,
        private={"alice/app": ["alice"], "bob/app": ["bob"]},
    ) as registry:
        registry.push_image("alice/app", "1", ALICE_APP)
        registry.push_image("bob/app", "1", BOB_APP)
        registry.push_image("team/shared", "1", SHARED)
        yield registry


@pytest.fixture
async def other() -> AsyncIterator[FakeRegistry]:
    """A second, ordinary upstream (ghcr.io) that must never see the clients' credentials."""
    async with FakeRegistry() as registry:
        registry.push_image("org/tool", "1", make_image(seed=34))
        yield registry


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def mirror(
    private: FakeRegistry, other: FakeRegistry, start_mirror: StartMirror, clock: FakeClock
) -> Client:
    return await start_mirror(
        private.url,
        clock=clock,
        builtin_upstreams=False,
        upstream=[
            {"host": "docker.io", "url": private.url, "client_credentials": "passthrough"},
            {"host": "ghcr.io", "url": other.url},
        ],
    )


async def pull_as(mirror: Client, user: str, name: str, tag: str) -> None:
    """What a logged-in Docker daemon does: HEAD the tag, GET the manifest, GET every blob."""
    headers = {"Accept": ALL_MANIFESTS, **basic(user)}
    head = await mirror.head(f"/v2/{name}/manifests/{tag}", headers=headers)
    assert head.status == 200, (user, name, head.status)
    digest = head.headers["Docker-Content-Digest"]
    resp = await mirror.get(f"/v2/{name}/manifests/{digest}", headers=headers)
    body = await resp.read()
    assert resp.status == 200 and sha256(body) == digest
    manifest = json.loads(body)
    for descriptor in [manifest["config"], *manifest["layers"]]:
        blob = await mirror.get(f"/v2/{name}/blobs/{descriptor['digest']}", headers=headers)
        assert blob.status == 200
        assert sha256(await blob.read()) == descriptor["digest"]


async def status_as(mirror: Client, user: str | None, path: str, method: str = "GET") -> int:
    headers = {"Accept": ALL_MANIFESTS, **(basic(user) if user else {})}
    resp = await mirror.request(method, path, headers=headers)
    await resp.read()
    return resp.status


def layer_of(manifest: Manifest) -> str:
    return str(json.loads(manifest.data)["layers"][0]["digest"])


async def test_anonymous_clients_get_the_challenge(mirror: Client, private: FakeRegistry) -> None:
    for path in ("/v2/", "/v2/alice/app/manifests/1", f"/v2/alice/app/blobs/{ALICE_APP.digest}"):
        resp = await mirror.get(path)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Basic ")
        assert (await resp.json())["errors"][0]["code"] == "UNAUTHORIZED"
    assert private.count() == 0


async def test_each_user_gets_their_own_private_repository(
    mirror: Client, private: FakeRegistry
) -> None:
    await pull_as(mirror, "alice", "alice/app", "1")
    await pull_as(mirror, "bob", "bob/app", "1")
    await pull_as(mirror, "alice", "team/shared", "1")
    await pull_as(mirror, "bob", "team/shared", "1")
    assert await status_as(mirror, "bob", "/v2/alice/app/manifests/1") == 401
    assert await status_as(mirror, "alice", "/v2/bob/app/manifests/1") == 401
    # Every token was bought with one of the users' own credentials.
    sent = {r.headers.get("Authorization") for r in private.filter_requests(server="auth")}
    assert sent == {basic("alice")["Authorization"], basic("bob")["Authorization"]}


async def test_cached_bytes_of_one_users_repository_never_reach_another(
    mirror: Client, private: FakeRegistry
) -> None:
    await pull_as(mirror, "alice", "alice/app", "1")
    layer = layer_of(ALICE_APP)
    private.reset_counts()
    for method, path in (
        ("GET", f"/v2/alice/app/manifests/{ALICE_APP.digest}"),
        ("HEAD", f"/v2/alice/app/manifests/{ALICE_APP.digest}"),
        ("GET", f"/v2/alice/app/blobs/{layer}"),
        ("HEAD", f"/v2/alice/app/blobs/{layer}"),
    ):
        assert await status_as(mirror, "bob", path, method) in (401, 403, 404)
    # The upstream was asked, with a token bob's own credentials bought.
    bob_tokens = [
        r
        for r in private.filter_requests(server="auth")
        if r.headers.get("Authorization") == basic("bob")["Authorization"]
    ]
    assert bob_tokens and all(r.query["scope"] == "repository:alice/app:pull" for r in bob_tokens)
    heads = private.filter_requests(server="registry", method="HEAD")
    assert heads and all(r.path.startswith("/v2/alice/app/") for r in heads)
    assert private.count(server="registry", method="GET") == 0  # nothing downloaded again
    assert private.count(server="cdn") == 0


async def test_content_is_stored_once_and_acceptance_is_remembered_for_a_while(
    mirror: Client, private: FakeRegistry, clock: FakeClock
) -> None:
    await pull_as(mirror, "alice", "team/shared", "1")
    private.reset_counts()
    await pull_as(mirror, "bob", "team/shared", "1")
    # Bob's first request is checked upstream with his token; nothing is downloaded again.
    assert private.count(server="registry", method="GET") == 0
    assert private.count(server="cdn") == 0
    checks = private.count(server="registry", method="HEAD")
    assert checks >= 1

    private.reset_counts()
    blob = f"/v2/team/shared/blobs/{layer_of(SHARED)}"
    assert await status_as(mirror, "bob", blob) == 200
    assert private.count(server="registry") == 0  # remembered: no upstream request
    clock.advance(61)  # passthrough_ttl (60 s) later: asked again
    assert await status_as(mirror, "bob", blob) == 200
    assert private.count(server="registry", method="HEAD") == 1


async def test_wrong_credentials_are_refused_with_the_challenge(
    mirror: Client, private: FakeRegistry
) -> None:
    wrong = base64.b64encode(b"alice:not-her-password").decode()
    resp = await mirror.get(
        "/v2/alice/app/manifests/1", headers={"Authorization": f"Basic {wrong}"}
    )
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Basic ")


async def test_credentials_never_reach_another_host(
    mirror: Client,
    private: FakeRegistry,
    other: FakeRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    await pull_as(mirror, "alice", "alice/app", "1")
    await pull_as(mirror, "alice", "ghcr.io/org/tool", "1")  # same client, other upstream
    assert other.count() > 0
    secrets = {USERS["alice"], basic("alice")["Authorization"].removeprefix("Basic ")}
    for request in other.requests:
        assert "Basic" not in request.headers.get("Authorization", "")
    for request in private.filter_requests(server="cdn"):
        assert "Authorization" not in request.headers
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert not any(secret in logged for secret in secrets)


async def test_neither_catalog_nor_status_lists_passthrough_repositories(
    mirror: Client, other: FakeRegistry
) -> None:
    await pull_as(mirror, "alice", "alice/app", "1")
    await pull_as(mirror, "alice", "ghcr.io/org/tool", "1")
    for path in ("/v2/_catalog", "/api/status"):
        resp = await mirror.get(path, headers=basic("alice"))
        assert resp.status == 200
        listed = json.dumps(await resp.json())
        assert "alice/app" not in listed
        assert "ghcr.io/org/tool" in listed  # the other upstream's are listed as ever


async def test_an_upstream_404_for_one_clients_credentials_is_not_remembered_for_others(
    mirror: Client, private: FakeRegistry
) -> None:
    # What one credential may not see (or does not exist yet) says nothing about another's
    # view, so passthrough requests bypass the negative cache.
    await pull_as(mirror, "alice", "alice/app", "1")  # alice's access to the repo is known
    assert await status_as(mirror, "alice", "/v2/alice/app/manifests/2") == 404
    private.push_image("alice/app", "2", make_image(seed=35))
    assert await status_as(mirror, "alice", "/v2/alice/app/manifests/2") == 200


async def test_a_referrers_list_is_served_only_to_a_client_the_upstream_lets_pull(
    start_mirror: StartMirror,
) -> None:
    """Without a referrers API, alice's list comes from a fallback tag the mirror keeps as
    a tag record: bob, whom the upstream refuses, is refused before it is read."""
    async with FakeRegistry(
        users=USERS, anonymous_pull=False, private={"alice/app": ["alice"]}, referrers_api=False
    ) as registry:
        registry.push_image("alice/app", "1", ALICE_APP)
        signature = make_referrer(ALICE_APP, "application/vnd.cncf.notary.signature")
        registry.push_referrer("alice/app", signature)
        mirror = await start_mirror(
            registry.url,
            builtin_upstreams=False,
            upstream=[
                {"host": "docker.io", "url": registry.url, "client_credentials": "passthrough"}
            ],
        )
        path = f"/v2/alice/app/referrers/{ALICE_APP.digest}"

        mine = await mirror.get(path, headers=basic("alice"))
        assert [m["digest"] for m in json.loads(await mine.read())["manifests"]] == [
            signature.digest
        ]
        theirs = await mirror.get(path, headers=basic("bob"))
        assert theirs.status == 401
