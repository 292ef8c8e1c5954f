"""Authenticating to the upstream: Docker Hub's token flow, Basic auth, token reuse, and
credentials that never reach anyone but the upstream they belong to."""

from __future__ import annotations

import base64
import logging

import pytest

from testkit.fakeupstream import FakeRegistry, Manifest, make_image
from tests.clients import pull_like_docker
from tests.conftest import Client, StartMirror, docker_io


async def test_one_token_serves_a_whole_pull_and_the_next_ones(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest
) -> None:
    for _ in range(3):
        await pull_like_docker(mirror, "library/alpine", "3.19")
    assert upstream.count(server="auth") == 1
    token_request = upstream.filter_requests(server="auth")[0]
    assert token_request.query["scope"] == "repository:library/alpine:pull"
    assert token_request.query["service"] == "fake.registry"
    assert "Authorization" not in token_request.headers  # anonymous


async def test_tokens_are_per_repository_and_fetched_without_a_second_challenge(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest
) -> None:
    upstream.push_image("library/other", "1", make_image(seed=9))
    await pull_like_docker(mirror, "library/alpine", "3.19")
    await pull_like_docker(mirror, "library/other", "1")
    scopes = [r.query["scope"] for r in upstream.filter_requests(server="auth")]
    assert scopes == ["repository:library/alpine:pull", "repository:library/other:pull"]
    # Only the very first request met a 401: the challenge is remembered.
    assert sum(1 for r in upstream.requests if r.status == 401) == 1


async def test_expired_tokens_are_renewed(
    start_mirror: StartMirror, upstream: FakeRegistry, alpine: Manifest
) -> None:
    mirror = await start_mirror(upstream.url, tag_ttl=0)  # every pull asks the upstream
    await pull_like_docker(mirror, "library/alpine", "3.19")
    upstream.expire_tokens()
    await pull_like_docker(mirror, "library/alpine", "3.19")
    assert upstream.count(server="auth") == 2


async def test_blob_redirects_are_followed_without_sending_registry_credentials(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest
) -> None:
    await pull_like_docker(mirror, "library/alpine", "3.19")
    cdn = upstream.filter_requests(server="cdn")
    assert len(cdn) == len(alpine.blobs)
    assert all(r.status == 200 for r in cdn)
    assert all("Authorization" not in r.headers for r in cdn)
    # ...while the registry itself did get the bearer token.
    blob_gets = [r for r in upstream.filter_requests(kind="blob") if r.status == 307]
    assert blob_gets and all(r.headers["Authorization"].startswith("Bearer ") for r in blob_gets)


async def test_configured_credentials_reach_the_token_realm(
    start_mirror: StartMirror, alpine: Manifest
) -> None:
    async with FakeRegistry(users={"bot": "s3cret"}, anonymous_pull=False) as private:
        private.push_image("team/app", "1", alpine)
        anonymous = await start_mirror(private.url)
        resp = await anonymous.get("/v2/team/app/manifests/1")
        assert resp.status == 403
        assert (await resp.json())["errors"][0]["code"] == "DENIED"

        mirror = await start_mirror(
            private.url,
            upstream=docker_io(
                private.url,
                username="bot",
                password="s3cret",
                anonymous_clients_use_credentials=True,
            ),
        )
        await pull_like_docker(mirror, "team/app", "1")
        token_requests = private.filter_requests(server="auth", method="GET")
        expected = "Basic " + base64.b64encode(b"bot:s3cret").decode()
        assert token_requests[-1].headers["Authorization"] == expected


async def test_basic_auth_upstreams_work(start_mirror: StartMirror, alpine: Manifest) -> None:
    async with FakeRegistry(auth="basic", users={"bot": "pw"}, redirect_blobs=False) as basic:
        basic.push_image("team/app", "1", alpine)
        mirror = await start_mirror(
            basic.url,
            upstream=docker_io(
                basic.url, username="bot", password="pw", anonymous_clients_use_credentials=True
            ),
        )
        await pull_like_docker(mirror, "team/app", "1")
        assert basic.count(server="auth") == 0


async def test_credentials_and_tokens_never_appear_in_logs(
    start_mirror: StartMirror, alpine: Manifest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakeRegistry(users={"bot": "hunter2"}, anonymous_pull=False) as private:
        private.push_image("team/app", "1", alpine)
        mirror = await start_mirror(
            private.url,
            upstream=docker_io(
                private.url,
                username="bot",
                password="hunter2",
                anonymous_clients_use_credentials=True,
            ),
            log_level="debug",
        )
        await pull_like_docker(mirror, "team/app", "1")
        tokens = {
            r.headers["Authorization"].removeprefix("Bearer ")
            for r in private.requests
            if r.headers.get("Authorization", "").startswith("Bearer ")
        }
    assert tokens
    secrets = {"hunter2", base64.b64encode(b"bot:hunter2").decode(), *tokens}
    for secret in secrets:
        assert secret not in caplog.text
