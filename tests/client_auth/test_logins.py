"""Logins: off by default; Basic credentials checked against htpasswd (changes picked up while
running); health endpoints open while pages need a login; failed logins logged by user, never
a password or token."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from mirror.server import auth, htpasswd
from mirror.server.auth import CLIENT_AUTH
from testkit.fakeupstream import FakeRegistry, Manifest
from tests.client_auth.helpers import (
    PASSWORDS,
    basic,
    bearer,
    error_of,
    get_token,
    hash_password,
    parse_challenge,
    pull,
)
from tests.conftest import Client, StartMirror

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
