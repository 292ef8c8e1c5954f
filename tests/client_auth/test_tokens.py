"""The mirror's own tokens: Docker's token flow end to end, the realm's rules for credentials,
expired, forged and orphaned tokens, and token keys shared between processes."""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from mirror.server import auth
from mirror.server.auth.tokens import CLOCK_SKEW, KEY_FILE, Tokens, stored_key
from testkit.clock import FakeClock
from testkit.fakeupstream import FakeRegistry, Manifest
from tests.client_auth.helpers import (
    PASSWORDS,
    basic,
    bearer,
    claims,
    error_of,
    get_token,
    parse_challenge,
    pull,
    write_htpasswd,
)
from tests.conftest import Client, StartMirror

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
