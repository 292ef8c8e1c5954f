"""Who may pull what: rules by user, group, upstream and repository, for pulls, tokens and the
catalog; no rule matching denies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mirror.upstream.routing import Router, UpstreamRepo
from testkit.fakeupstream import FakeRegistry, Manifest, make_image, make_layer
from tests.client_auth.helpers import PASSWORDS, basic, bearer, claims, error_of, get_token
from tests.clients import ALL_MANIFESTS
from tests.conftest import Client, StartMirror

# --- who may pull what ----------------------------------------------------------------------

GHCR_APP = make_image(layers=[make_layer({"app": b"the ghcr.io org/app\n"})])
GHCR_OTHER = make_image(layers=[make_layer({"app": b"the ghcr.io other/app\n"})])
HUB_APP = make_image(layers=[make_layer({"app": b"the Docker Hub org/app\n"})])


@pytest.fixture
async def ghcr() -> AsyncIterator[FakeRegistry]:
    async with FakeRegistry() as registry:
        yield registry


RULES: list[dict[str, Any]] = [
    # bob may not have docker.io's team/* images, whatever the rules below say
    {"users": ["bob"], "upstreams": ["docker.io"], "repositories": ["team/*"], "access": "deny"},
    # the ops group (alice) pulls everything
    {"groups": ["ops"]},
    # anyone logged in pulls Docker Hub's official images
    {"users": ["*"], "upstreams": ["docker.io"], "repositories": ["library/*"]},
    # bob pulls from ghcr.io (its org/* only)
    {"users": ["bob"], "upstreams": ["ghcr.io"], "repositories": ["org/*"]},
    # team/* on docker.io for the devs group (bob is in it, but the deny came first)
    {"groups": ["devs"], "repositories": ["team/*"]},
]


@pytest.fixture
async def ruled(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    ghcr: FakeRegistry,
    users_file: Path,
    alpine: Manifest,
) -> Client:
    upstream.push_image("team/tool", "1", HUB_APP)
    ghcr.push_image("org/app", "1", GHCR_APP)
    ghcr.push_image("other/app", "1", GHCR_OTHER)
    return await start_mirror(
        upstream.url,
        builtin_upstreams=False,
        upstream=[{"host": "docker.io", "url": upstream.url}, {"host": "ghcr.io", "url": ghcr.url}],
        htpasswd=str(users_file),
        auth_groups={"ops": ["alice"], "devs": ["bob", "carol"]},
        auth_rules=RULES,
    )


async def test_rules_by_user_group_upstream_and_repository(ruled: Client) -> None:
    alice, bob, carol = (basic(user, PASSWORDS[user]) for user in ("alice", "bob", "carol"))
    tagged = {
        "hub alpine": "/v2/alpine/manifests/3.19",
        "hub team/tool": "/v2/team/tool/manifests/1",
        "ghcr org/app (ns)": "/v2/org/app/manifests/1?ns=ghcr.io",
        "ghcr org/app (path)": "/v2/ghcr.io/org/app/manifests/1",
        "ghcr other/app": "/v2/ghcr.io/other/app/manifests/1",
    }
    allowed = {
        "alice": set(tagged),
        "bob": {"hub alpine", "ghcr org/app (ns)", "ghcr org/app (path)"},
        "carol": {"hub alpine", "hub team/tool"},
    }
    for user, headers in (("alice", alice), ("bob", bob), ("carol", carol)):
        for what, path in tagged.items():
            resp = await ruled.head(path, headers={"Accept": ALL_MANIFESTS, **headers})
            expected = 200 if what in allowed[user] else 403
            assert resp.status == expected, (user, what, resp.status)

    denied = await ruled.get("/v2/ghcr.io/other/app/manifests/1", headers=bob)
    assert await error_of(denied) == (
        403,
        "DENIED",
        "user 'bob' may not pull ghcr.io/other/app from this mirror",
    )
    # Blobs and tag lists are guarded the same way.
    blob = f"/v2/ghcr.io/other/app/blobs/{GHCR_OTHER.layers[0].digest}"
    assert (await ruled.get(blob, headers=bob)).status == 403
    fetched = await ruled.get(blob, headers=alice)
    assert fetched.status == 200
    assert await fetched.read() == GHCR_OTHER.layers[0].data
    assert (await ruled.get("/v2/team/tool/tags/list", headers=bob)).status == 403
    # Unknown registries and bad names are answered as ever, once logged in.
    unknown = await ruled.get("/v2/quay.io/x/y/manifests/1", headers=bob)
    assert (await error_of(unknown))[:2] == (404, "NAME_UNKNOWN")


async def test_the_repository_is_resolved_once_for_the_rules_and_the_answer(
    ruled: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolved: list[tuple[str, str | None]] = []
    real_repository = Router.repository

    def counted(router: Router, name: str, ns: str | None) -> UpstreamRepo:
        resolved.append((name, ns))
        return real_repository(router, name, ns)

    monkeypatch.setattr(Router, "repository", counted)
    alice = basic("alice", PASSWORDS["alice"])
    assert (await ruled.head("/v2/org/app/manifests/1?ns=ghcr.io", headers=alice)).status == 200
    assert (await ruled.get("/v2/ghcr.io/other/app/tags/list", headers=alice)).status == 200
    assert resolved == [("org/app", "ghcr.io"), ("ghcr.io/other/app", None)]


async def test_a_token_grants_what_the_rules_allow_and_use_decides_again(
    ruled: Client,
) -> None:
    scopes = "repository:ghcr.io/org/app:pull repository:ghcr.io/other/app:pull,push"
    body = await get_token(ruled, "bob", PASSWORDS["bob"], scope=scopes)
    assert claims(body["token"])["access"] == [
        {"type": "repository", "name": "ghcr.io/org/app", "actions": ["pull"]},
        {"type": "repository", "name": "ghcr.io/other/app", "actions": []},
    ]
    token = bearer(body["token"])
    assert (await ruled.head("/v2/ghcr.io/org/app/manifests/1", headers=token)).status == 200
    assert (await ruled.head("/v2/ghcr.io/other/app/manifests/1", headers=token)).status == 403


async def test_the_catalog_lists_only_what_the_user_may_pull(ruled: Client) -> None:
    alice, bob = basic("alice", PASSWORDS["alice"]), basic("bob", PASSWORDS["bob"])
    for path in (
        "/v2/alpine/manifests/3.19",
        "/v2/team/tool/manifests/1",
        "/v2/ghcr.io/org/app/manifests/1",
        "/v2/ghcr.io/other/app/manifests/1",
    ):
        assert (await ruled.get(path, headers=alice)).status == 200
    everything = ["ghcr.io/org/app", "ghcr.io/other/app", "library/alpine", "team/tool"]
    listed = await ruled.get("/v2/_catalog", headers=alice)
    assert (await listed.json())["repositories"] == everything
    listed = await ruled.get("/v2/_catalog", headers=bob)
    assert (await listed.json())["repositories"] == ["ghcr.io/org/app", "library/alpine"]
    listed = await ruled.get("/v2/_catalog?ns=ghcr.io", headers=bob)
    assert (await listed.json())["repositories"] == ["org/app"]


async def test_no_rule_matching_denies(
    start_mirror: StartMirror, upstream: FakeRegistry, users_file: Path, alpine: Manifest
) -> None:
    mirror = await start_mirror(
        upstream.url,
        htpasswd=str(users_file),
        auth_rules=[{"users": ["alice"], "repositories": ["library/*"]}],
    )
    path = "/v2/alpine/manifests/3.19"
    assert (await mirror.head(path, headers=basic("alice", PASSWORDS["alice"]))).status == 200
    resp = await mirror.get(path, headers=basic("carol", PASSWORDS["carol"]))
    assert (await error_of(resp))[:2] == (403, "DENIED")
    # Logged in, carol still reaches the ping (docker login) and the status page.
    assert (await mirror.get("/v2/", headers=basic("carol", PASSWORDS["carol"]))).status == 200
    assert (
        await mirror.get("/api/status", headers=basic("carol", PASSWORDS["carol"]))
    ).status == 200
