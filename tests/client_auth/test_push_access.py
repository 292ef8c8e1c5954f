"""Who may push and delete: the action each request needs (from its method and path), rules
granting pull < push < delete, tokens granting push and delete scopes only as the rules
allow, `403 DENIED` for a user the rules refuse and `401 insufficient_scope` for a token
without the scope, and where a blob may be mounted from.

The push routes answer `405` for now; what these tests check is the authorisation in
front of them: a request allowed passes (anything but 401 and 403), one refused does not.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from mirror import config
from mirror.server import addressing, auth
from mirror.server.app import create_app
from testkit.fakeupstream import FakeRegistry
from tests.client_auth.helpers import (
    PASSWORDS,
    basic,
    bearer,
    claims,
    error_of,
    get_token,
    parse_challenge,
)
from tests.conftest import Client, StartMirror, docker_io, toml_value

DIGEST = "sha256:" + "b" * 64
UPLOAD = "/v2/local/app/blobs/uploads/4b2f9c1e"

# Every request shape of the push side, with the action it needs.
REQUESTS: list[tuple[str, str, str]] = [
    ("GET", "/v2/local/app/manifests/1.0", "pull"),
    ("HEAD", f"/v2/local/app/blobs/{DIGEST}", "pull"),
    ("GET", "/v2/local/app/tags/list", "pull"),
    ("POST", "/v2/local/app/blobs/uploads/", "push"),
    ("POST", f"/v2/local/app/blobs/uploads/?digest={DIGEST}", "push"),
    ("PATCH", UPLOAD, "push"),
    ("PUT", f"{UPLOAD}?digest={DIGEST}", "push"),
    ("GET", UPLOAD, "push"),  # an upload's status is the pusher's business only
    ("DELETE", UPLOAD, "push"),  # cancelling an upload
    ("PUT", "/v2/local/app/manifests/1.0", "push"),
    ("PUT", f"/v2/local/app/manifests/{DIGEST}", "push"),
    ("DELETE", f"/v2/local/app/manifests/{DIGEST}", "delete"),
    ("DELETE", "/v2/local/app/manifests/1.0", "delete"),  # a tag (OCI 1.1)
    ("DELETE", f"/v2/local/app/blobs/{DIGEST}", "delete"),
]

RULES: list[dict[str, Any]] = [
    {"users": ["alice"], "repositories": ["local/*"], "access": "delete"},
    {"users": ["bob"], "repositories": ["local/*"], "access": "push"},
    {"users": ["*"]},  # everyone else logged in pulls, and only pulls
]
ALLOWED = {"alice": {"pull", "push", "delete"}, "bob": {"pull", "push"}, "carol": {"pull"}}


@pytest.fixture
async def ruled(start_mirror: StartMirror, upstream: FakeRegistry, users_file: Path) -> Client:
    return await start_mirror(
        upstream.url, htpasswd=str(users_file), auth_rules=RULES, hosted=["local/*"]
    )


async def send(mirror: Client, method: str, path: str, headers: dict[str, str]) -> Any:
    return await mirror.request(method, path, data=b"{}", headers=headers)


# --- the rules, with Basic credentials ------------------------------------------------------


async def test_each_request_needs_its_action_and_the_rules_decide(ruled: Client) -> None:
    for user, allowed in ALLOWED.items():
        for method, path, action in REQUESTS:
            resp = await send(ruled, method, path, basic(user, PASSWORDS[user]))
            if action in allowed:
                assert resp.status not in (401, 403), (user, method, path, resp.status)
            else:
                assert resp.status == 403, (user, method, path, resp.status)
                assert (await error_of(resp))[1] == "DENIED"


async def test_a_refusal_names_the_user_and_the_repository(ruled: Client) -> None:
    carol, bob = basic("carol", PASSWORDS["carol"]), basic("bob", PASSWORDS["bob"])
    pushed = await send(ruled, "PUT", "/v2/local/app/manifests/1.0", carol)
    assert await error_of(pushed) == (
        403,
        "DENIED",
        "user 'carol' may not push to hosted/local/app on this mirror",
    )
    deleted = await send(ruled, "DELETE", f"/v2/local/app/manifests/{DIGEST}", bob)
    assert await error_of(deleted) == (
        403,
        "DENIED",
        "user 'bob' may not delete from hosted/local/app on this mirror",
    )
    # Outside the hosted local/*, nothing takes a push, whoever asks: 405, not a refusal.
    elsewhere = await send(ruled, "POST", "/v2/library/alpine/blobs/uploads/", bob)
    assert (await error_of(elsewhere))[:2] == (405, "UNSUPPORTED")


async def test_without_rules_every_user_may_push_and_delete(
    start_mirror: StartMirror, upstream: FakeRegistry, users_file: Path
) -> None:
    mirror = await start_mirror(upstream.url, htpasswd=str(users_file), hosted=["local/*"])
    carol = basic("carol", PASSWORDS["carol"])
    for method, path, _ in REQUESTS:
        assert (await send(mirror, method, path, carol)).status not in (401, 403), (method, path)


async def test_a_client_without_credentials_is_challenged_for_the_scope_it_needs(
    ruled: Client,
) -> None:
    needed = {"pull": "pull", "push": "pull,push", "delete": "delete"}
    for method, path, action in REQUESTS:
        resp = await send(ruled, method, path, {})
        assert resp.status == 401, (method, path)
        scheme, params = parse_challenge(resp.headers["WWW-Authenticate"])
        assert scheme == "Bearer"
        assert params["scope"] == f"repository:local/app:{needed[action]}", (method, path)
        assert "error" not in params


# --- tokens ---------------------------------------------------------------------------------


async def test_a_token_grants_the_push_and_delete_the_rules_allow_never_an_error(
    ruled: Client,
) -> None:
    asked = "repository:local/app:pull,push,delete repository:library/alpine:pull,push"
    granted = {}
    for user in ALLOWED:
        body = await get_token(ruled, user, PASSWORDS[user], scope=asked)
        granted[user] = {
            entry["name"]: entry["actions"] for entry in claims(body["token"])["access"]
        }
    assert granted == {
        "alice": {"local/app": ["pull", "push", "delete"], "library/alpine": ["pull"]},
        "bob": {"local/app": ["pull", "push"], "library/alpine": ["pull"]},
        "carol": {"local/app": ["pull"], "library/alpine": ["pull"]},
    }
    # Only what was asked is granted; `*` asks for everything.
    body = await get_token(ruled, "alice", PASSWORDS["alice"], scope="repository:local/app:push")
    assert claims(body["token"])["access"][0]["actions"] == ["push"]
    body = await get_token(ruled, "bob", PASSWORDS["bob"], scope="repository:local/app:*")
    assert claims(body["token"])["access"][0]["actions"] == ["pull", "push"]


async def test_tokens_push_and_delete_only_as_granted_and_as_the_rules_allow(
    ruled: Client,
) -> None:
    for user, allowed in ALLOWED.items():
        scope = "repository:local/app:pull,push,delete"
        token = bearer((await get_token(ruled, user, PASSWORDS[user], scope=scope))["token"])
        for method, path, action in REQUESTS:
            resp = await send(ruled, method, path, token)
            if action in allowed:
                assert resp.status not in (401, 403), (user, method, path, resp.status)
            else:  # the rules refuse: final, no token would help
                assert resp.status == 403, (user, method, path, resp.status)


async def test_a_token_without_the_scope_is_challenged_for_it(ruled: Client) -> None:
    alice = PASSWORDS["alice"]
    pull_only = (await get_token(ruled, "alice", alice, scope="repository:local/app:pull"))["token"]
    resp = await send(ruled, "PUT", "/v2/local/app/manifests/1.0", bearer(pull_only))
    assert await error_of(resp) == (
        401,
        "UNAUTHORIZED",
        "the token does not grant push on local/app; ask for repository:local/app:pull,push",
    )
    assert (await resp.json())["errors"][0]["detail"] == [
        {"Type": "repository", "Name": "local/app", "Action": "push"}
    ]
    scheme, params = parse_challenge(resp.headers["WWW-Authenticate"])
    assert (scheme, params["scope"], params["error"]) == (
        "Bearer",
        "repository:local/app:pull,push",
        "insufficient_scope",
    )
    # The client asks for what the challenge named, and gets it.
    pushing = (await get_token(ruled, "alice", alice, scope=params["scope"]))["token"]
    resp = await send(ruled, "PUT", "/v2/local/app/manifests/1.0", bearer(pushing))
    assert resp.status not in (401, 403)
    # A push token is no delete token, and a token for one repository is none for another.
    resp = await send(ruled, "DELETE", f"/v2/local/app/manifests/{DIGEST}", bearer(pushing))
    _, params = parse_challenge(resp.headers["WWW-Authenticate"])
    assert (resp.status, params["scope"], params["error"]) == (
        401,
        "repository:local/app:delete",
        "insufficient_scope",
    )
    resp = await send(ruled, "PUT", "/v2/local/other/manifests/1.0", bearer(pushing))
    assert resp.status == 401


async def test_docker_login_s_scopeless_token_is_accepted_on_the_ping(ruled: Client) -> None:
    # `docker login`: a token without scope, then GET /v2/ with it must answer 200.
    resp = await ruled.get(
        auth.TOKEN_PATH,
        params={"client_id": "docker", "offline_token": "true", "service": "mirror"},
        headers=basic("bob", PASSWORDS["bob"]),
    )
    assert resp.status == 200
    token = (await resp.json())["token"]
    assert claims(token)["access"] == []
    assert (await ruled.get("/v2/", headers=bearer(token))).status == 200
    # It pushes nothing: the push asks for a token with the scope.
    resp = await send(ruled, "POST", "/v2/local/app/blobs/uploads/", bearer(token))
    assert resp.status == 401
    assert 'error="insufficient_scope"' in resp.headers["WWW-Authenticate"]


# --- mount sources --------------------------------------------------------------------------

MOUNT_SOURCE = "/test/mount-source/"


async def start_with_mount_probe(
    aiohttp_client: Any, where: Path, upstream_url: str, **settings: Any
) -> Client:
    """A mirror with one more route, standing in for a push route asking whether the
    repository of its `{name}` may be mounted from (`auth.may_pull`). Its data dir is
    `where`, its config file `where`.toml."""
    values = {"upstream": upstream_url, "data_dir": str(where), **settings}
    file = where.with_suffix(".toml")
    file.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in values.items()))
    app = await create_app(config.load(config_file=file, environ={}).config, clock=time.time)

    async def mount_source(request: web.Request) -> web.Response:
        repo = addressing.target(request)
        return web.json_response({"mountable": auth.may_pull(request, repo)})

    app.router.add_get(MOUNT_SOURCE + "{name:.+}", mount_source)
    client: Client = await aiohttp_client(app)
    return client


async def mountable(mirror: Client, name: str, headers: dict[str, str]) -> bool:
    resp = await mirror.get(MOUNT_SOURCE + name, headers=headers)
    assert resp.status == 200, await resp.text()
    answer: bool = (await resp.json())["mountable"]
    return answer


async def test_a_blob_mounts_only_from_a_repository_the_user_may_pull(
    aiohttp_client: Any, tmp_path: Path, upstream: FakeRegistry, users_file: Path
) -> None:
    rules = [
        {"users": ["alice"], "repositories": ["local/*", "library/*"], "access": "push"},
        {"users": ["bob"], "repositories": ["local/*"], "access": "push"},
    ]
    mirror = await start_with_mount_probe(
        aiohttp_client,
        tmp_path / "ruled",
        upstream.url,
        htpasswd=str(users_file),
        auth_rules=rules,
        hosted=["local/*"],
    )
    alice, bob = basic("alice", PASSWORDS["alice"]), basic("bob", PASSWORDS["bob"])
    assert await mountable(mirror, "library/alpine", alice)
    assert await mountable(mirror, "local/base", bob)
    assert not await mountable(mirror, "library/alpine", bob)  # so the push uploads instead


async def test_without_authentication_anything_mounts_but_a_passthrough_repository(
    aiohttp_client: Any, tmp_path: Path, upstream: FakeRegistry
) -> None:
    open_mirror = await start_with_mount_probe(aiohttp_client, tmp_path / "open", upstream.url)
    assert await mountable(open_mirror, "library/alpine", {})
    # What a passthrough upstream holds only that upstream may hand out, client by client.
    passthrough = await start_with_mount_probe(
        aiohttp_client,
        tmp_path / "passthrough",
        upstream.url,
        upstream=docker_io(upstream.url, client_credentials="passthrough"),
    )
    assert not await mountable(passthrough, "library/alpine", basic("dave", "registry-pw"))
