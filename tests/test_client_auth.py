"""Client authentication and authorisation: htpasswd users with Basic credentials or the
mirror's own tokens (Docker's token flow), rules on who may pull what, open health
endpoints, back-off for failing logins, and no secret in any log line."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from mirror import config
from mirror.config import ConfigError
from mirror.server import auth, htpasswd
from mirror.server.auth import CLIENT_AUTH, ClientAuth
from mirror.server.auth.throttle import (
    FAILURE_WINDOW,
    FAILURES_BEFORE_BACKOFF,
    FIRST_BACKOFF,
    Throttle,
)
from mirror.server.auth.tokens import CLOCK_SKEW, KEY_FILE, Tokens, stored_key
from mirror.upstream.routing import Router, UpstreamRepo
from testkit.clock import FakeClock
from testkit.fakeupstream import FakeRegistry, Manifest, make_image, make_layer
from tests.clients import ALL_MANIFESTS
from tests.conftest import Client, StartMirror, sha256

PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-2", "carol": "carol-secret-3"}
GHCR_APP = make_image(layers=[make_layer({"app": b"the ghcr.io org/app\n"})])
GHCR_OTHER = make_image(layers=[make_layer({"app": b"the ghcr.io other/app\n"})])
HUB_APP = make_image(layers=[make_layer({"app": b"the Docker Hub org/app\n"})])


def hash_password(password: str, prefix: bytes = b"$2b$") -> str:
    """A bcrypt hash at the lowest cost (fast tests); `$2y$` is what `htpasswd -B` writes."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4))
    return (prefix + hashed[4:]).decode()


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    path.write_text("".join(f"{user}:{hash_password(pw)}\n" for user, pw in users.items()))
    return path


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    return scheme, dict(re.findall(r'(\w+)="([^"]*)"', rest))


async def error_of(resp: Any) -> tuple[int, str, str]:
    """(status, code, message) of a spec error answer."""
    body = await resp.json()
    (entry,) = body["errors"]
    return resp.status, entry["code"], entry["message"]


async def pull(
    mirror: Client, name: str, tag: str, headers: dict[str, str], query: str = ""
) -> Manifest | None:
    """HEAD the tag, GET the manifest by digest and every blob, all with `headers`."""
    accept = {"Accept": ALL_MANIFESTS, **headers}
    head = await mirror.head(f"/v2/{name}/manifests/{tag}{query}", headers=accept)
    assert head.status == 200, head.status
    digest = head.headers["Docker-Content-Digest"]
    resp = await mirror.get(f"/v2/{name}/manifests/{digest}{query}", headers=accept)
    assert resp.status == 200, await resp.text()
    manifest = json.loads(await resp.read())
    for descriptor in [manifest["config"], *manifest["layers"]]:
        blob = await mirror.get(f"/v2/{name}/blobs/{descriptor['digest']}{query}", headers=headers)
        assert blob.status == 200, await blob.text()
        assert sha256(await blob.read()) == descriptor["digest"]
    return None


async def get_token(
    mirror: Client, user: str, password: str, scope: str | None = None
) -> dict[str, Any]:
    query = {"service": "mirror"} | ({"scope": scope} if scope else {})
    resp = await mirror.get(auth.TOKEN_PATH, params=query, headers=basic(user, password))
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=="))
    return decoded


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    return write_htpasswd(tmp_path / "htpasswd", PASSWORDS)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def secured(
    start_mirror: StartMirror, upstream: FakeRegistry, users_file: Path, clock: FakeClock
) -> Client:
    """A mirror in front of the fake Docker Hub that every user may pull through."""
    return await start_mirror(upstream.url, clock=clock, htpasswd=str(users_file))


def client_auth(mirror: Client) -> ClientAuth:
    return mirror.app[CLIENT_AUTH]


# --- off by default -------------------------------------------------------------------------


async def test_off_by_default_anyone_pulls_and_there_is_no_realm(
    mirror: Client, alpine: Manifest
) -> None:
    assert (await mirror.get("/v2/")).status == 200
    await pull(mirror, "library/alpine", "3.19", {})
    assert (await mirror.get(auth.TOKEN_PATH)).status == 404
    assert CLIENT_AUTH not in mirror.app


# --- Basic credentials ----------------------------------------------------------------------


async def test_basic_credentials_right_and_wrong(secured: Client, alpine: Manifest) -> None:
    await pull(secured, "library/alpine", "3.19", basic("alice", PASSWORDS["alice"]))

    for headers in (
        {},
        basic("alice", "wrong"),
        basic("mallory", "anything"),
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Negotiate abc"},
    ):
        resp = await secured.get("/v2/library/alpine/manifests/3.19", headers=headers)
        assert (await error_of(resp))[:2] == (401, "UNAUTHORIZED")
        scheme, params = parse_challenge(resp.headers["WWW-Authenticate"])
        assert scheme == "Bearer"
        assert params["realm"] == f"http://{secured.host}:{secured.port}/auth/token"
        assert params["scope"] == "repository:library/alpine:pull"


async def test_a_pull_with_basic_credentials_costs_one_bcrypt_run(
    secured: Client, alpine: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[bytes] = []
    real_check = htpasswd._check

    def counting(password: bytes, hashed: bytes) -> bool:
        runs.append(hashed)
        time.sleep(0.05)  # slow like a real cost factor: concurrent checks overlap
        return real_check(password, hashed)

    monkeypatch.setattr(htpasswd, "_check", counting)
    headers = basic("bob", PASSWORDS["bob"])
    answers = await asyncio.gather(*(secured.get("/v2/", headers=headers) for _ in range(8)))
    assert [r.status for r in answers] == [200] * 8
    await pull(secured, "library/alpine", "3.19", headers)
    assert len(runs) == 1  # eight at once shared one run; the pull used the remembered one

    # A wrong password is never remembered: each attempt is checked.
    for _ in range(2):
        assert (await secured.get("/v2/", headers=basic("bob", "guess"))).status == 401
    assert len(runs) == 3


async def test_htpasswd_y_entries_and_changes_are_picked_up_while_running(
    start_mirror: StartMirror, upstream: FakeRegistry, tmp_path: Path
) -> None:
    file = tmp_path / "htpasswd"
    file.write_text(f"# users\n\nalice:{hash_password('pw-a', b'$2y$')}\n")
    mirror = await start_mirror(upstream.url, htpasswd=str(file))
    assert (await mirror.get("/v2/", headers=basic("alice", "pw-a"))).status == 200
    assert (await mirror.get("/v2/", headers=basic("dave", "pw-d"))).status == 401

    file.write_text(f"dave:{hash_password('pw-d')}\n")  # alice removed, dave added
    assert (await mirror.get("/v2/", headers=basic("dave", "pw-d"))).status == 200
    assert (await mirror.get("/v2/", headers=basic("alice", "pw-a"))).status == 401

    file.write_text("dave:plaintext\n")  # broken: logged, the users before are kept
    assert (await mirror.get("/v2/", headers=basic("dave", "pw-d"))).status == 200


# --- the token flow -------------------------------------------------------------------------


async def test_docker_token_flow_end_to_end(
    secured: Client, alpine: Manifest, clock: FakeClock
) -> None:
    # 1. The ping without credentials: the challenge names the mirror's own realm.
    ping = await secured.get("/v2/")
    assert await error_of(ping) == (401, "UNAUTHORIZED", "authentication required")
    assert ping.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    scheme, params = parse_challenge(ping.headers["WWW-Authenticate"])
    assert scheme == "Bearer"
    assert params["realm"] == f"http://{secured.host}:{secured.port}/auth/token"
    assert params["service"] == f"{secured.host}:{secured.port}"
    assert "scope" not in params

    # 2. The realm with Basic credentials, as `docker login` and `docker pull` call it.
    realm_path = params["realm"].removeprefix(f"http://{secured.host}:{secured.port}")
    resp = await secured.get(
        realm_path,
        params={
            "account": "alice",
            "client_id": "docker",
            "offline_token": "true",
            "service": params["service"],
            "scope": "repository:library/alpine:pull",
        },
        headers=basic("alice", PASSWORDS["alice"]),
    )
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert set(body) == {"token", "access_token", "expires_in", "issued_at"}
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    assert body["issued_at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(clock.now)))
    issued = claims(body["token"])
    assert issued["sub"] == "alice"
    assert issued["aud"] == params["service"]
    assert issued["exp"] - issued["iat"] == 300
    assert issued["access"] == [
        {"type": "repository", "name": "library/alpine", "actions": ["pull"]}
    ]

    # 3. The pull with the token; the ping too.
    await pull(secured, "library/alpine", "3.19", bearer(body["token"]))
    assert (await secured.get("/v2/", headers=bearer(body["token"]))).status == 200


async def test_the_realm_wants_right_basic_credentials(secured: Client) -> None:
    anonymous = await secured.get(auth.TOKEN_PATH, params={"scope": "repository:x:pull"})
    assert anonymous.status == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic realm=")
    wrong = await secured.get(auth.TOKEN_PATH, headers=basic("alice", "nope"))
    assert await error_of(wrong) == (401, "UNAUTHORIZED", "wrong user name or password")
    # A token is no key to another token.
    token = (await get_token(secured, "alice", PASSWORDS["alice"]))["token"]
    assert (await secured.get(auth.TOKEN_PATH, headers=bearer(token))).status == 401


async def test_the_realm_takes_the_oauth2_password_grant_too(
    secured: Client, alpine: Manifest
) -> None:
    form = {
        "grant_type": "password",
        "username": "carol",
        "password": PASSWORDS["carol"],
        "service": "mirror",
        "client_id": "containerd-client",
        "scope": "repository:library/alpine:pull",
    }
    resp = await secured.post(auth.TOKEN_PATH, data=form)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert claims(body["access_token"])["sub"] == "carol"
    await pull(secured, "library/alpine", "3.19", bearer(body["access_token"]))

    wrong = await secured.post(auth.TOKEN_PATH, data={**form, "password": "nope"})
    assert (await error_of(wrong))[:2] == (401, "UNAUTHORIZED")
    refresh = await secured.post(auth.TOKEN_PATH, data={**form, "grant_type": "refresh_token"})
    assert (await error_of(refresh))[:2] == (405, "UNSUPPORTED")


async def test_challenge_scope_names_the_repository_as_the_client_wrote_it(
    secured: Client,
) -> None:
    resp = await secured.get("/v2/alpine/manifests/3.19?ns=docker.io")
    _, params = parse_challenge(resp.headers["WWW-Authenticate"])
    assert params["scope"] == "repository:alpine:pull"
    resp = await secured.head("/v2/registry.example.com/org/app/blobs/sha256:" + "0" * 64)
    assert resp.status == 401
    _, params = parse_challenge(resp.headers["WWW-Authenticate"])
    assert params["scope"] == "repository:registry.example.com/org/app:pull"


async def test_auth_realm_setting_overrides_the_derived_realm(
    start_mirror: StartMirror, upstream: FakeRegistry, users_file: Path
) -> None:
    mirror = await start_mirror(
        upstream.url,
        htpasswd=str(users_file),
        auth_realm="https://mirror.example.com/auth/token",
    )
    _, params = parse_challenge((await mirror.get("/v2/")).headers["WWW-Authenticate"])
    assert params["realm"] == "https://mirror.example.com/auth/token"


async def test_expired_forged_and_orphaned_tokens_are_refused(
    secured: Client, alpine: Manifest, clock: FakeClock, users_file: Path
) -> None:
    token = (await get_token(secured, "alice", PASSWORDS["alice"]))["token"]
    path = "/v2/library/alpine/manifests/3.19"
    assert (await secured.head(path, headers=bearer(token))).status == 200

    header, payload, signature = token.split(".")
    raised = base64.urlsafe_b64encode(
        json.dumps({**claims(token), "sub": "root", "exp": 2**40}).encode()
    )
    unsigned = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').decode().rstrip("=")
    other_key = Tokens(b"k" * 32, 300, clock=clock).issue("alice", "mirror", [])
    forged = [
        f"{header}.{raised.decode().rstrip('=')}.{signature}",  # claims changed
        f"{unsigned}.{payload}.",  # alg none
        other_key.token,  # another mirror's key
        token[:-2] + ("AA" if not token.endswith("AA") else "BB"),  # signature changed
        "not-a-token",
        "a.b.c",
        "x" * 8000,
    ]
    for bad in forged:
        resp = await secured.head(path, headers=bearer(bad))
        assert resp.status == 401, bad
        scheme, params = parse_challenge(resp.headers["WWW-Authenticate"])
        assert (scheme, params["error"]) == ("Bearer", "invalid_token")

    clock.advance(300 + CLOCK_SKEW - 1)
    assert (await secured.head(path, headers=bearer(token))).status == 200
    clock.advance(2)
    expired = await secured.get(path, headers=bearer(token))
    assert await error_of(expired) == (401, "UNAUTHORIZED", "the token is invalid or has expired")

    # A user removed from the file: their tokens stop working at once.
    fresh = (await get_token(secured, "bob", PASSWORDS["bob"]))["token"]
    assert (await secured.head(path, headers=bearer(fresh))).status == 200
    write_htpasswd(users_file, {"alice": PASSWORDS["alice"]})
    assert (await secured.head(path, headers=bearer(fresh))).status == 401


# --- who may pull what ----------------------------------------------------------------------


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


# --- what stays open ------------------------------------------------------------------------


async def test_health_stays_open_metrics_open_unless_configured_pages_need_a_login(
    start_mirror: StartMirror, upstream: FakeRegistry, users_file: Path, tmp_path: Path
) -> None:
    open_metrics = await start_mirror(
        upstream.url, htpasswd=str(users_file), data_dir=str(tmp_path / "a")
    )
    closed_metrics = await start_mirror(
        upstream.url, htpasswd=str(users_file), metrics_auth=True, data_dir=str(tmp_path / "b")
    )
    for mirror in (open_metrics, closed_metrics):
        assert (await mirror.get("/healthz")).status == 200
        assert (await mirror.get("/readyz")).status == 200
        for page in ("/", "/api/status", "/static/app.js", "/nothing-here"):
            resp = await mirror.get(page)
            assert resp.status == 401, page
            assert resp.headers["WWW-Authenticate"].startswith('Basic realm="mirror"')
        logged_in = await mirror.get("/api/status", headers=basic("alice", PASSWORDS["alice"]))
        assert logged_in.status == 200
    assert (await open_metrics.get("/metrics")).status == 200
    refused = await closed_metrics.get("/metrics")
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"].startswith("Basic ")
    scraped = await closed_metrics.get("/metrics", headers=basic("alice", PASSWORDS["alice"]))
    assert scraped.status == 200
    assert "mirror_auth_failures_total" in await scraped.text()


# --- brute force ----------------------------------------------------------------------------


async def test_failing_logins_from_one_address_back_off_and_spare_other_addresses(
    secured: Client, clock: FakeClock
) -> None:
    client_auth(secured).logins.client_key = lambda request: request.headers.get("X-Client", "-")
    attacker, other = {"X-Client": "10.0.0.66"}, {"X-Client": "10.0.0.7"}
    for _ in range(FAILURES_BEFORE_BACKOFF):
        resp = await secured.get("/v2/", headers={**attacker, **basic("alice", "guess")})
        assert resp.status == 401
    # Now even the right password from there waits, at the realm too.
    for path in ("/v2/", auth.TOKEN_PATH):
        blocked = await secured.get(path, headers={**attacker, **basic("alice", "alice-secret-1")})
        assert (await error_of(blocked))[:2] == (429, "TOOMANYREQUESTS")
        assert blocked.headers["Retry-After"] == str(int(FIRST_BACKOFF))
    # Another address is not affected, nor are tokens already issued.
    ok = await secured.get("/v2/", headers={**other, **basic("alice", PASSWORDS["alice"])})
    assert ok.status == 200

    clock.advance(FIRST_BACKOFF)
    resp = await secured.get("/v2/", headers={**attacker, **basic("alice", "guess-again")})
    assert resp.status == 401
    blocked = await secured.get("/v2/", headers={**attacker, **basic("alice", "x")})
    assert blocked.headers["Retry-After"] == str(int(2 * FIRST_BACKOFF))  # doubled

    clock.advance(2 * FIRST_BACKOFF + FAILURE_WINDOW + 1)  # quiet for a window
    ok = await secured.get("/v2/", headers={**attacker, **basic("alice", PASSWORDS["alice"])})
    assert ok.status == 200


def test_throttle_doubles_to_a_cap_forgives_after_a_quiet_window_and_stays_bounded() -> None:
    clock = FakeClock()
    throttle = Throttle(clock=clock, failures=3, window=60, first_backoff=1, max_backoff=8)
    backoffs = [throttle.failed("a") for _ in range(7)]
    assert backoffs == [None, None, 1, 2, 4, 8, 8]
    assert throttle.retry_after("a") == 8
    assert throttle.retry_after("b") is None
    clock.advance(8)
    assert throttle.retry_after("a") is None
    clock.advance(59)
    assert throttle.failed("a") == 8  # within the window of the block's end: still doubling
    clock.advance(8 + 61)
    assert [throttle.failed("a") for _ in range(3)] == [None, None, 1]  # forgiven

    many = Throttle(clock=clock, tracked=100)
    for n in range(1000):
        many.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(many) == 100


async def test_a_burst_of_parallel_guesses_is_cut_short(
    secured: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = 0
    real_check = htpasswd._check

    def slow(password: bytes, hashed: bytes) -> bool:
        nonlocal runs
        runs += 1
        time.sleep(0.1)
        return real_check(password, hashed)

    monkeypatch.setattr(htpasswd, "_check", slow)
    answers = await asyncio.gather(
        *(secured.get("/v2/", headers=basic("alice", f"guess-{n}")) for n in range(20))
    )
    statuses = sorted(r.status for r in answers)
    assert statuses.count(429) >= 10, statuses
    assert set(statuses) == {401, 429}
    assert runs <= 2 * FAILURES_BEFORE_BACKOFF


# --- logs -----------------------------------------------------------------------------------


async def test_logs_name_the_user_but_never_a_password_or_token(
    secured: Client, alpine: Manifest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    password = PASSWORDS["alice"]
    body = await get_token(secured, "alice", password, scope="repository:library/alpine:pull")
    await pull(secured, "library/alpine", "3.19", bearer(body["token"]))
    await pull(secured, "library/alpine", "3.19", basic("alice", password))
    await secured.get("/v2/", headers=basic("alice", "hunter2-wrong"))
    await secured.get("/v2/", headers=basic("hunter2-typed-as-user", password))

    text = caplog.text
    secrets_seen = [
        password,
        "hunter2",
        body["token"],
        body["token"].split(".")[2],
        basic("alice", password)["Authorization"].split()[1],
    ]
    for secret in secrets_seen:
        assert secret not in text
    access = [r for r in caplog.records if r.name == "mirror.access"]
    users = [r.access["user"] for r in access]  # type: ignore[attr-defined]
    assert users.count("alice") == 1 + 2 * 5  # the realm and two pulls of five requests
    assert users[-2:] == ["-", "-"]
    assert "user=alice id=" in access[0].getMessage()
    assert "failed login for user 'alice'" in text
    assert "failed login for an unknown user" in text


# --- keys shared between processes ----------------------------------------------------------


async def test_tokens_verify_across_processes_sharing_a_secret_or_a_data_dir(
    start_mirror: StartMirror, upstream: FakeRegistry, users_file: Path, tmp_path: Path
) -> None:
    async def token_works_on(issuer: Client, verifier: Client) -> bool:
        token = (await get_token(issuer, "alice", PASSWORDS["alice"]))["token"]
        return (await verifier.get("/v2/", headers=bearer(token))).status == 200

    async def start(data_dir: str, **settings: Any) -> Client:
        return await start_mirror(
            upstream.url, htpasswd=str(users_file), data_dir=data_dir, **settings
        )

    shared = str(tmp_path / "shared")
    worker_a, worker_b = await start(shared), await start(shared)
    assert (tmp_path / "shared" / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert await token_works_on(worker_a, worker_b)
    elsewhere = await start(str(tmp_path / "elsewhere"))
    assert not await token_works_on(worker_a, elsewhere)
    secret = "correct horse battery staple"
    host_a = await start(str(tmp_path / "host-a"), token_secret=secret)
    host_b = await start(str(tmp_path / "host-b"), token_secret=secret)
    assert await token_works_on(host_a, host_b)
    assert not (tmp_path / "host-a" / KEY_FILE).exists()


def test_several_processes_creating_the_key_at_once_agree(tmp_path: Path) -> None:
    path = tmp_path / "data" / KEY_FILE
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: stored_key(path), range(16)))
    assert len(keys) == 1
    assert stored_key(path) in keys
    assert [p.name for p in path.parent.iterdir()] == [KEY_FILE]  # no candidates left
    path.write_text("garbage\n")
    with pytest.raises(RuntimeError, match="does not hold a token key"):
        stored_key(path)


# --- configuration --------------------------------------------------------------------------


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> config.Config:
    file = tmp_path / "m.toml"
    file.write_text(text)
    loaded = config.load(config_file=file, environ=environ or {})
    htpasswd.check_file(loaded)  # what `mirror serve` does before serving
    return loaded.config


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("bob:$apr1$abc$defghijklmnopqrstuvw", "line 3: user 'bob' has an MD5 (apr1) hash"),
        ("bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "line 3: user 'bob' has a SHA-1 hash"),
        ("bob:plain", "line 3: user 'bob' has not a bcrypt hash"),
        ("bob", "line 3: expected USER:BCRYPT-HASH"),
        ("alice:" + "$2b$04$" + "a" * 53, "line 3: user 'alice' is listed twice"),
        ("bob:$2b$03$" + "a" * 53, "line 3: user 'bob': bcrypt cost must be 4 to 31"),
    ],
)
def test_htpasswd_errors_name_the_key_and_line(tmp_path: Path, entry: str, message: str) -> None:
    file = tmp_path / "users"
    file.write_text(f"# comment\nalice:{hash_password('a')}\n{entry}\n")
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f'htpasswd = "{file}"\n')
    assert str(caught.value).startswith(f"htpasswd (from {tmp_path / 'm.toml'}): {file} ")
    assert message in str(caught.value)


def test_htpasswd_must_be_readable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"htpasswd \(from MIRROR_HTPASSWD\): cannot read"):
        htpasswd.check_file(config.load(environ={"MIRROR_HTPASSWD": str(tmp_path / "absent")}))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('auth_rules = [{users = ["*"]}]', "auth_rules (from"),
        ("metrics_auth = true", "metrics_auth (from"),
        ('auth_groups = {a = ["x"]}', "auth_groups (from"),
    ],
)
def test_auth_settings_without_htpasswd_are_an_error(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message) + ".*needs htpasswd"):
        load(tmp_path, text + "\n")


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ('[{groups = ["nope"]}]', "rule 1: unknown group 'nope' (auth_groups: ops)"),
        (
            '[{users = ["*"]}, {users = ["a"], upstreams = ["ghcr.io"]}]',
            "rule 2: upstream 'ghcr.io' is not served",
        ),
        ('[{users = ["a"], access = "push"}]', 'access must be "pull" or "deny"'),
        ('[{repositories = ["x"]}]', "needs `users`"),
        ('[{users = ["a"], colour = "blue"}]', "unknown key 'colour'"),
        ('[{users = [""]}]', "users: expected a list of non-empty strings"),
        ('"nope"', "expected JSON"),
    ],
)
def test_bad_rules_are_named(tmp_path: Path, users_file: Path, rules: str, message: str) -> None:
    text = (
        f'htpasswd = "{users_file}"\nbuiltin_upstreams = false\n'
        'upstream = [{host = "docker.io"}]\nauth_groups = {ops = ["alice"]}\n'
        f"auth_rules = {rules}\n"
    )
    with pytest.raises(ConfigError, match=r"auth_rules \(from .*" + re.escape(message)):
        load(tmp_path, text)


def test_auth_settings_from_the_environment_and_check_config(
    tmp_path: Path, users_file: Path
) -> None:
    environ = {
        "MIRROR_HTPASSWD": str(users_file),
        "MIRROR_AUTH_GROUPS": '{"ops": ["alice"]}',
        "MIRROR_AUTH_RULES": '[{"groups": ["ops"], "upstreams": ["index.docker.io"]}]',
        "MIRROR_TOKEN_TTL": "120",
        "MIRROR_TOKEN_SECRET": "0123456789abcdef-secret",
        "MIRROR_METRICS_AUTH": "true",
    }
    loaded = config.load(environ=environ)
    cfg = loaded.config
    assert cfg.auth.htpasswd == users_file
    assert cfg.auth.auth_groups == {"ops": ("alice",)}
    assert cfg.auth.auth_rules == (config.AuthRule(groups=("ops",), upstreams=("docker.io",)),)
    assert (cfg.auth.token_ttl, cfg.auth.metrics_auth) == (120.0, True)
    rendered = config.render(loaded)
    assert "0123456789abcdef-secret" not in rendered
    assert 'token_secret = "********"  # MIRROR_TOKEN_SECRET' in rendered
    assert 'auth_groups = {"ops" = ["alice"]}' in rendered
    assert 'auth_rules = [{groups = ["ops"], upstreams = ["docker.io"], access = "pull"}]' in (
        rendered
    )
    with pytest.raises(ConfigError, match=r"token_ttl .*at least 60"):
        config.load(environ={**environ, "MIRROR_TOKEN_TTL": "30"})
    with pytest.raises(ConfigError, match=r"token_secret .*at least 16"):
        config.load(environ={**environ, "MIRROR_TOKEN_SECRET": "short"})


def test_serve_takes_htpasswd_as_a_flag(users_file: Path) -> None:
    from mirror import cli

    args = cli._parser().parse_args(["serve", "--htpasswd", str(users_file)])
    overrides = {key: getattr(args, key, None) for key in cli.SERVE_FLAGS}
    loaded = config.load(environ={}, overrides=overrides)
    assert loaded.config.auth.htpasswd == users_file
    assert loaded.sources["htpasswd"] == "--htpasswd"
