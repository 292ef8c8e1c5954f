"""Who a failed login is counted against: an IPv6 client by its /64, a client behind a
trusted proxy by the address `X-Forwarded-For` names (never by what the client wrote itself,
never from an untrusted peer); and password checks that queue on their own threads without
holding up the default executor."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request

from mirror import config
from mirror.config import ConfigError
from mirror.server import htpasswd
from mirror.server.auth.logins import PASSWORD_CHECK_THREADS
from mirror.server.auth.throttle import FAILURES_BEFORE_BACKOFF
from mirror.server.clients import client_address, client_key
from testkit.clock import FakeClock
from testkit.fakeupstream import FakeRegistry
from testkit.waiting import wait_until
from tests.client_auth.helpers import PASSWORDS, basic, client_auth, error_of
from tests.conftest import Client, StartMirror

PROXIES = ["10.0.0.0/8", "192.0.2.1"]


def test_ipv6_clients_are_counted_by_their_64_and_ipv4_by_address() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff::9")
    assert client_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("fe80::1%eth0") == "fe80::/64"
    assert client_key("::ffff:198.51.100.7") == "198.51.100.7"
    assert client_key("198.51.100.7") != client_key("198.51.100.8")
    assert client_key("-") == "-"


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("198.51.100.9", ["203.0.113.5"], "198.51.100.9"),  # not a proxy: header ignored
        ("10.1.2.3", [], "10.1.2.3"),  # a proxy that said nothing
        ("10.1.2.3", ["203.0.113.5"], "203.0.113.5"),
        ("10.1.2.3", ["6.6.6.6, 203.0.113.5"], "203.0.113.5"),  # the client's own word: no
        ("10.1.2.3", ["203.0.113.5, 192.0.2.1"], "203.0.113.5"),  # through two proxies
        ("10.1.2.3", ["6.6.6.6", "203.0.113.5"], "203.0.113.5"),  # two header lines
        ("10.1.2.3", ["not-an-address"], "10.1.2.3"),
        ("10.1.2.3", ["192.0.2.1"], "10.1.2.3"),  # proxies all the way
    ],
)
def test_x_forwarded_for_is_believed_from_trusted_proxies_only(
    peer: str, forwarded: list[str], client: str
) -> None:
    headers = [("X-Forwarded-For", value) for value in forwarded]
    request = make_mocked_request("GET", "/v2/", headers=headers).clone(remote=peer)
    proxies = [ipaddress.ip_network(cidr) for cidr in PROXIES]
    assert client_address(request, proxies) == client


def test_trusted_proxies_are_addresses_or_networks_from_a_file_or_the_environment(
    tmp_path: Path,
) -> None:
    file = tmp_path / "m.toml"
    file.write_text('trusted_proxies = ["10.0.0.0/8", "2001:db8::1", "192.0.2.9/24"]\n')
    loaded = config.load(config_file=file, environ={})
    assert loaded.config.auth.trusted_proxies == ("10.0.0.0/8", "2001:db8::1/128", "192.0.2.0/24")
    env = config.load(config_file=None, environ={"MIRROR_TRUSTED_PROXIES": "10.1.0.0/16, ::1"})
    assert env.config.auth.trusted_proxies == ("10.1.0.0/16", "::1/128")
    file.write_text('trusted_proxies = ["proxy.example.com"]\n')
    with pytest.raises(ConfigError, match=r"trusted_proxies.*'proxy.example.com' is not an IP"):
        config.load(config_file=file, environ={})


async def fail_logins(mirror: Client, forwarded_for: str) -> None:
    for _ in range(FAILURES_BEFORE_BACKOFF):
        headers = {"X-Forwarded-For": forwarded_for, **basic("alice", "guess")}
        assert (await mirror.get("/v2/", headers=headers)).status == 401


async def test_behind_a_trusted_proxy_ipv6_guessers_are_blocked_by_their_64(
    start_mirror: StartMirror, upstream: FakeRegistry, users_file: Path, clock: FakeClock
) -> None:
    mirror = await start_mirror(
        upstream.url, clock=clock, htpasswd=str(users_file), trusted_proxies=["127.0.0.1"]
    )
    await fail_logins(mirror, "2001:db8:0:1::1")
    same_64 = {"X-Forwarded-For": "2001:db8:0:1::beef", **basic("alice", PASSWORDS["alice"])}
    blocked = await mirror.get("/v2/", headers=same_64)
    assert (await error_of(blocked))[:2] == (429, "TOOMANYREQUESTS")
    other_64 = {"X-Forwarded-For": "2001:db8:0:2::1", **basic("alice", PASSWORDS["alice"])}
    assert (await mirror.get("/v2/", headers=other_64)).status == 200


async def test_without_trusted_proxies_x_forwarded_for_changes_nothing(
    start_mirror: StartMirror, upstream: FakeRegistry, users_file: Path, clock: FakeClock
) -> None:
    mirror = await start_mirror(upstream.url, clock=clock, htpasswd=str(users_file))
    await fail_logins(mirror, "203.0.113.5")
    forged = {"X-Forwarded-For": "203.0.113.77", **basic("alice", PASSWORDS["alice"])}
    assert (await mirror.get("/v2/", headers=forged)).status == 429


async def test_password_checks_queue_on_their_own_threads(
    secured: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood of logins busy in bcrypt leaves the default executor free (metadata reads
    and commits run there), and never runs more than PASSWORD_CHECK_THREADS at once."""
    release = threading.Event()
    running = 0
    most = 0
    lock = threading.Lock()
    real_check = htpasswd._check

    def stuck(password: bytes, hashed: bytes) -> bool:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(30)
        with lock:
            running -= 1
        return real_check(password, hashed)

    monkeypatch.setattr(htpasswd, "_check", stuck)
    client_auth(secured).logins.client_key = lambda request: request.headers["X-Client"]
    guessers = [f"10.0.0.{n}" for n in range(12)]  # more than the default executor's threads
    flood = [
        asyncio.ensure_future(
            secured.get("/v2/", headers={"X-Client": who, **basic("alice", f"guess {who}")})
        )
        for who in guessers
    ]
    await wait_until(
        lambda: running == PASSWORD_CHECK_THREADS, within=10, message="bcrypt threads busy"
    )
    answer = await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 5)
    assert answer == "free"
    release.set()
    statuses = [(await resp).status for resp in flood]
    assert statuses == [401] * len(guessers)
    assert most <= PASSWORD_CHECK_THREADS
