"""An upstream's credentials and token flow as a trust boundary: a credentialed upstream is
not opened to anonymous clients by accident, credentials go only to the upstream's own token
service, token responses are read whole but capped, and the token cache stays bounded."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from mirror import config
from mirror.upstream.auth import Authenticator
from mirror.upstream.credentials import ClientCredential
from mirror.upstream.realms import realm_refusal, registrable_domain
from mirror.upstream.tokencache import Token, TokenCache
from testkit.clock import FakeClock
from testkit.fakeupstream import FakeRegistry, Manifest
from tests.client_auth.helpers import write_htpasswd
from tests.clients import pull_like_docker
from tests.conftest import StartMirror, docker_io
from tests.runcli import run_cli

CREDENTIALED = '[[upstream]]\nhost = "ghcr.io"\nusername = "bot"\npassword = "pw"\n'

# --- no confused deputy by default -------------------------------------------------------


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_credentials_without_client_auth_refuse_to_start(tmp_path: Path, command: str) -> None:
    (tmp_path / "mirror.toml").write_text(CREDENTIALED)
    result = run_cli(command, cwd=tmp_path)
    assert result.returncode == 2
    assert "upstream ghcr.io (from mirror.toml)" in result.stderr
    assert "htpasswd" in result.stderr
    assert "anonymous_clients_use_credentials = true" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_opt_in_or_client_auth_lets_it_start(tmp_path: Path) -> None:
    opted = tmp_path / "opted.toml"
    opted.write_text(CREDENTIALED + "anonymous_clients_use_credentials = true\n")
    ghcr = config.load(config_file=opted, environ={}).config.registries.upstream("ghcr.io")
    assert ghcr is not None and ghcr.anonymous_clients_use_credentials

    users = write_htpasswd(tmp_path / "htpasswd", {"alice": "a-secret"})
    authed = tmp_path / "authed.toml"
    authed.write_text(f'htpasswd = "{users}"\n' + CREDENTIALED)
    config.load(config_file=authed, environ={})  # no error


def test_passthrough_upstreams_carry_no_credentials_of_their_own(tmp_path: Path) -> None:
    file = tmp_path / "mirror.toml"
    file.write_text(CREDENTIALED + 'client_credentials = "passthrough"\n')
    with pytest.raises(config.ConfigError, match=r"upstream ghcr.io .*remove username"):
        config.load(config_file=file, environ={})


def test_check_config_prints_the_trust_keys_back(tmp_path: Path) -> None:
    (tmp_path / "mirror.toml").write_text(
        '[[upstream]]\nhost = "registry.example.com"\nclient_credentials = "passthrough"\n'
        'passthrough_ttl = 30\ntoken_hosts = ["auth.example.net"]\n'
    )
    result = run_cli("check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = tomllib.loads(result.stdout)["upstream"]
    assert printed[-1]["client_credentials"] == "passthrough"
    assert printed[-1]["passthrough_ttl"] == 30.0
    assert printed[-1]["token_hosts"] == ["auth.example.net"]
    nvcr = next(table for table in printed if table["host"] == "nvcr.io")
    assert nvcr["token_hosts"] == ["authn.nvidia.com"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('client_credentials = "everyone"', "client_credentials: expected"),
        ("passthrough_ttl = 0", "passthrough_ttl: must be greater than 0"),
        ('token_hosts = ["https://auth.example.com/token"]', "token_hosts: 'https://"),
    ],
)
def test_bad_trust_keys_are_named(tmp_path: Path, line: str, message: str) -> None:
    file = tmp_path / "mirror.toml"
    file.write_text(f'[[upstream]]\nhost = "ghcr.io"\n{line}\n')
    with pytest.raises(config.ConfigError, match=f"upstream ghcr.io .*{message}"):
        config.load(config_file=file, environ={})


def test_built_in_nvcr_may_use_nvidias_token_service() -> None:
    loaded = config.load(config_file=None, environ={}, overrides={"data_dir": "/tmp/x"})
    nvcr = loaded.config.registries.upstream("nvcr.io")
    assert nvcr is not None and nvcr.token_hosts == ("authn.nvidia.com",)


# --- token realms ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("realm", "upstream", "token_hosts", "allowed"),
    [
        ("https://auth.docker.io/token", "https://registry-1.docker.io", (), True),
        ("https://ghcr.io/token", "https://ghcr.io", (), True),
        ("https://authn.nvidia.com/token", "https://nvcr.io", ("authn.nvidia.com",), True),
        ("https://authn.nvidia.com/token", "https://nvcr.io", (), False),
        ("http://auth.docker.io/token", "https://registry-1.docker.io", (), False),
        ("http://auth.lab.example/token", "http://registry.lab.example", (), True),
        ("https://evil.example/token", "https://registry-1.docker.io", (), False),
        ("https://auth.example.co.uk/t", "https://registry.example.co.uk", (), True),
        ("https://auth.other.co.uk/t", "https://registry.example.co.uk", (), False),
        ("https://evil.azurecr.io/t", "https://team.azurecr.io", (), False),
        ("http://localhost:9/token", "http://127.0.0.1:5000", (), True),
        ("http://169.254.169.254/token", "http://127.0.0.1:5000", (), False),
        ("https://10.0.0.2/token", "https://10.0.0.1", (), False),
        ("file:///etc/passwd", "http://127.0.0.1:5000", (), False),
    ],
)
def test_which_realms_may_receive_credentials(
    realm: str, upstream: str, token_hosts: tuple[str, ...], allowed: bool
) -> None:
    assert (realm_refusal(realm, upstream, token_hosts) is None) is allowed


def test_the_registrable_domain_rule() -> None:
    assert registrable_domain("registry-1.docker.io") == "docker.io"
    assert registrable_domain("a.b.example.co.uk") == "example.co.uk"
    assert registrable_domain("ghcr.io") == "ghcr.io"


@pytest.mark.parametrize(
    ("realm", "reason"),
    [
        ("http://evil.example/token", "outside 127.0.0.1's own domain"),
        ("http://169.254.169.254/latest/meta-data", "on 169.254.169.254"),
    ],
)
async def test_a_foreign_realm_gets_no_credentials_and_a_clean_502(
    start_mirror: StartMirror,
    alpine: Manifest,
    caplog: pytest.LogCaptureFixture,
    realm: str,
    reason: str,
) -> None:
    async with FakeRegistry(users={"bot": "s3cret"}, anonymous_pull=False) as private:
        private.push_image("team/app", "1", alpine)
        private.advertised_realm = realm
        upstream = docker_io(
            private.url, username="bot", password="s3cret", anonymous_clients_use_credentials=True
        )
        mirror = await start_mirror(private.url, upstream=upstream)
        for _ in range(2):
            resp = await mirror.get("/v2/team/app/manifests/1")
            assert resp.status == 502
            message = (await resp.json())["errors"][0]["message"]
            assert "sends no credentials there" in message and reason in message
        assert private.count(server="auth") == 0
    warnings = [r for r in caplog.records if "refusing to ask for a token" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not per request


# --- token responses ---------------------------------------------------------------------


@pytest.fixture
async def chunking_realm(upstream: FakeRegistry) -> AsyncIterator[tuple[str, list[int]]]:
    """A token realm that fetches the fake's token and sends it back chunked, in pieces
    (several writes, spaced out), padded to the size asked for by `?pad=`: (realm URL, padding)."""
    padding = [0]

    async def token(request: web.Request) -> web.StreamResponse:
        async with (
            aiohttp.ClientSession() as session,
            session.get(upstream.auth_url, params=request.query) as real,
        ):
            body = (await real.read()).rstrip(b"}")
        body += b', "padding": "' + b"x" * padding[0] + b'"}'
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        piece = max(7, len(body) // 6)
        for start in range(0, len(body), piece):
            await resp.write(body[start : start + piece])
            await asyncio.sleep(0.002)  # the wire, not a wait: each piece its own read
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/token", token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/token", padding
    finally:
        await runner.cleanup()


async def test_a_chunked_token_body_is_read_whole(
    upstream: FakeRegistry,
    alpine: Manifest,
    start_mirror: StartMirror,
    chunking_realm: tuple[str, list[int]],
) -> None:
    upstream.advertised_realm, _ = chunking_realm
    mirror = await start_mirror(upstream.url)
    await pull_like_docker(mirror, "library/alpine", "3.19")


async def test_a_token_body_over_the_cap_is_a_clean_502(
    upstream: FakeRegistry,
    alpine: Manifest,
    start_mirror: StartMirror,
    chunking_realm: tuple[str, list[int]],
) -> None:
    upstream.advertised_realm, padding = chunking_realm
    padding[0] = 70 * 1024
    mirror = await start_mirror(upstream.url)
    resp = await mirror.get("/v2/library/alpine/manifests/3.19")
    assert resp.status == 502
    assert "token response larger than 65536 bytes" in (await resp.json())["errors"][0]["message"]


# --- the token cache ---------------------------------------------------------------------


async def test_a_flood_of_repository_names_leaves_the_token_cache_bounded(
    upstream: FakeRegistry,
) -> None:
    tokens = TokenCache(max_entries=16)
    async with aiohttp.ClientSession() as session:
        auth = Authenticator(
            session,
            upstream="docker.io",
            upstream_url=upstream.url,
            username=None,
            password=None,
            tokens=tokens,
        )
        assert auth.learn(f'Bearer realm="{upstream.auth_url}",service="fake.registry"')
        for _ in range(100):
            name = f"flood/{secrets.token_hex(8)}"
            assert await auth.authorization(f"repository:{name}:pull")
            assert len(tokens) <= 16
        assert len(tokens) == 16  # full, and no fuller
        assert upstream.count(server="auth") == 100
        # The most recent scope is still cached: asking again costs no token request.
        await auth.authorization(f"repository:{name}:pull")
        assert upstream.count(server="auth") == 100


async def test_many_clients_credentials_share_the_one_bound(upstream: FakeRegistry) -> None:
    """Passthrough: tokens are cached per client credential (under its keyed hash), in the
    same bounded cache."""
    tokens = TokenCache(max_entries=8)
    users = {f"user{index}": secrets.token_hex(8) for index in range(40)}
    async with (
        FakeRegistry(users=users, anonymous_pull=False) as registry,
        aiohttp.ClientSession() as session,
    ):
        auth = Authenticator(
            session,
            upstream="docker.io",
            upstream_url=registry.url,
            username=None,
            password=None,
            tokens=tokens,
        )
        assert auth.learn(f'Bearer realm="{registry.auth_url}",service="fake.registry"')
        for user, password in users.items():
            client = ClientCredential.of(user, password)
            assert await auth.authorization("repository:team/app:pull", client)
            assert len(tokens) <= 8
        assert len(tokens) == 8
        sent = {r.headers["Authorization"] for r in registry.filter_requests(server="auth")}
        assert len(sent) == len(users)  # each token bought with its own client's credentials


def test_expired_tokens_leave_the_cache() -> None:
    clock = FakeClock(now=1000.0)
    tokens = TokenCache(max_entries=4, margin=30.0, clock=clock)
    tokens.put(("", "old"), Token("a", expires_at=1100.0))
    assert tokens.get(("", "old")) is not None
    clock.advance(80)  # within the renewal margin: gone
    assert tokens.get(("", "old")) is None and len(tokens) == 0

    for index in range(4):
        tokens.put(("", f"short-{index}"), Token("s", expires_at=clock() + 40))
    clock.advance(20)
    tokens.put(("", "fresh"), Token("f", expires_at=clock() + 300))
    # Full: the expired ones go first, the fresh one stays.
    assert len(tokens) == 1 and tokens.get(("", "fresh")) is not None


def test_the_least_recently_used_token_goes_first() -> None:
    tokens = TokenCache(max_entries=2, clock=lambda: 0.0)
    tokens.put(("", "a"), Token("a", expires_at=600.0))
    tokens.put(("", "b"), Token("b", expires_at=600.0))
    assert tokens.get(("", "a")) is not None  # a is now the most recent
    tokens.put(("", "c"), Token("c", expires_at=600.0))
    assert tokens.get(("", "b")) is None
    assert tokens.get(("", "a")) is not None and tokens.get(("", "c")) is not None


def test_a_client_credential_shows_neither_its_secret_nor_a_plain_hash() -> None:
    credential = ClientCredential.of("alice", "hunter2")
    assert "hunter2" not in repr(credential) and credential.key not in repr(credential)
    assert credential.key != hashlib.sha256(b"alice\0hunter2").hexdigest()  # keyed, not plain
    assert ClientCredential.of("alice", "hunter2").key == credential.key  # stable per process
    assert ClientCredential.of("alice", "hunter3").key != credential.key
