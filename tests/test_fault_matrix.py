"""Upstream faults as a matrix. For every fault, a cold manifest pull (by tag) and a cold
blob pull through the mirror, and for each:

- what the client sees: a JSON error naming the upstream, or, when the fault strikes after
  the blob's response has begun, a transfer cut before its last byte (never a complete one);
- what the cache holds: nothing new, and no temp files once the request is over;
- what the metrics say: exactly which upstream requests were counted with which status, and
  the failure on the status page's list of recent upstream errors;
- that nothing leaks: the same fault repeated leaves no more file descriptors and no more
  asyncio tasks than the first time did;
- that the same pull works as soon as the fault is gone.

Decisions the table records: a 401 the upstream keeps sending after the mirror fetched a
fresh token is `403 DENIED` (the upstream refuses access; retrying will not help, and a 5xx
would send clients looking for an outage); a wrong `Docker-Content-Digest` on a blob is
ignored (blob bytes are checked against the digest the client asked for); manifests are
not tested against a slow body, as they are smaller than one chunk of the fake's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

import aiohttp
import pytest

from testkit.fakeupstream import Blob, FakeRegistry, Fault, Manifest, make_image, random_layer
from testkit.mirrorproc import free_port
from testkit.tls import make_private_ca
from testkit.waiting import wait_until
from tests.conftest import Client, StartMirror, content_files, docker_io
from tests.scrape import scrape

Target = Literal["manifest", "blob"]
Transport = Literal["fake", "refused", "dns", "tls"]
UpstreamCounts = Mapping[tuple[str, str, str], int]  # (method, kind, status) -> requests

REPO, TAG = "library/app", "1"
ACCEPT = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)
# Four of the fake's 64 KiB chunks: room for faults in the middle of the body.
BLOB_BYTES = 256 * 1024
# The first try's outcome and metrics are checked; the later ones show that nothing grows.
TRIES = 3
SETTLE_SECONDS = 3.0
UNRESOLVABLE = "registry.invalid"  # RFC 6761: never resolves
BOGUS_DIGEST = "sha256:" + "0" * 64
SLOW = 1.5  # seconds a slow upstream stalls: far past the timeouts below

# What the first request for a repository costs before the real one: the anonymous
# attempt's 401 challenge and the token it leads to.
AUTH_MANIFEST = {("HEAD", "manifest", "401"): 1, ("GET", "token", "200"): 1}
AUTH_BLOB = {("GET", "blob", "401"): 1, ("GET", "token", "200"): 1}
# A redirect to the CDN, and the CDN's answer.
TO_CDN = {("GET", "blob", "307"): 1}


@dataclass(frozen=True)
class Image:
    manifest: Manifest
    layer: Blob
    other: Manifest  # a different valid manifest: what a confused upstream might send
    impostor: Blob  # a different blob of the layer's size


@dataclass(frozen=True)
class Case:
    fault: str
    target: Target
    # What the client sees: a status and error code, or `cut` (a 200 whose body breaks off
    # before its end). `message` must be in the error (`{upstream}` is the upstream's name).
    status: int
    code: str | None
    message: str
    upstream: UpstreamCounts  # exactly the upstream requests the first try counts
    arm: Callable[[FakeRegistry, Image], list[Fault]] | None = None
    transport: Transport = "fake"
    settings: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    cut: bool = False
    caches: bool = False  # the fault is harmless: the object is fetched and cached anyway
    status_page: str | None = None  # in the newest of the status page's upstream errors

    @property
    def id(self) -> str:
        return f"{self.fault}-{self.target}"


def manifest_path(fault: Fault) -> Fault:
    fault.path_contains = f"/{REPO}/manifests/"
    return fault


def registry_blob(fault: Fault) -> Fault:
    fault.path_contains = f"/{REPO}/blobs/"
    return fault


def cdn(fault: Fault) -> Fault:
    fault.server = "cdn"
    return fault


def counts(*parts: UpstreamCounts) -> dict[tuple[str, str, str], int]:
    total: Counter[tuple[str, str, str]] = Counter()
    for part in parts:
        total.update(part)
    return dict(total)


def redirect_to(location: str, *, status: int = 307, before_auth: bool = False) -> Fault:
    return Fault(
        "status",
        status=status,
        headers={"Location": location},
        times=None,
        before_auth=before_auth,
    )


TIMED_OUT = "upstream {upstream} timed out"
UNREACHABLE = "upstream {upstream} is unreachable"
BROKEN_BODY = "upstream {upstream} broke off the response body"
NO_MATCH = "upstream {upstream} sent {what} that do"  # "bytes that do" / "a manifest that does"

CASES = [
    # --- no answer at all -------------------------------------------------------------------
    Case(
        "connection-refused",
        "manifest",
        503,
        "UNAVAILABLE",
        UNREACHABLE,
        {("HEAD", "manifest", "error"): 1},
        transport="refused",
    ),
    Case(
        "connection-refused",
        "blob",
        503,
        "UNAVAILABLE",
        UNREACHABLE,
        {("GET", "blob", "error"): 1},
        transport="refused",
    ),
    Case(
        "dns-failure",
        "manifest",
        503,
        "UNAVAILABLE",
        UNREACHABLE,
        {("HEAD", "manifest", "error"): 1},
        transport="dns",
    ),
    Case(
        "dns-failure",
        "blob",
        503,
        "UNAVAILABLE",
        UNREACHABLE,
        {("GET", "blob", "error"): 1},
        transport="dns",
    ),
    Case(
        "tls-untrusted",
        "manifest",
        502,
        "UNAVAILABLE",
        "upstream {upstream} has a TLS certificate the mirror does not trust",
        {("HEAD", "manifest", "error"): 1},
        transport="tls",
    ),
    Case(
        "tls-untrusted",
        "blob",
        502,
        "UNAVAILABLE",
        "upstream {upstream} has a TLS certificate the mirror does not trust",
        {("GET", "blob", "error"): 1},
        transport="tls",
    ),
    Case(
        "dropped-connection",
        "manifest",
        502,
        "UNAVAILABLE",
        "upstream {upstream} closed the connection without answering",
        counts(AUTH_MANIFEST, {("HEAD", "manifest", "error"): 1}),
        # aiohttp resends a request whose connection closed unanswered once: drop both.
        arm=lambda hub, image: [manifest_path(Fault("drop", times=None))],
    ),
    Case(
        "dropped-connection",
        "blob",
        502,
        "UNAVAILABLE",
        "upstream {upstream} closed the connection without answering",
        counts(AUTH_BLOB, TO_CDN, {("GET", "blob", "error"): 1}),
        arm=lambda hub, image: [cdn(Fault("drop", times=None))],
    ),
    # --- too slow -----------------------------------------------------------------------------
    Case(
        "slow-headers",
        "manifest",
        504,
        "UNAVAILABLE",
        TIMED_OUT,
        counts(AUTH_MANIFEST, {("HEAD", "manifest", "timeout"): 1}),
        arm=lambda hub, image: [manifest_path(Fault("slow", delay=SLOW))],
        settings={"request_timeout": 0.5, "read_timeout": 5.0},
    ),
    Case(
        "slow-headers",
        "blob",
        504,
        "UNAVAILABLE",
        TIMED_OUT,
        counts(AUTH_BLOB, TO_CDN, {("GET", "blob", "timeout"): 1}),
        arm=lambda hub, image: [cdn(Fault("slow", delay=SLOW))],
        settings={"request_timeout": 0.5, "read_timeout": 5.0},
    ),
    Case(
        "slow-body",
        "blob",
        200,
        None,
        "",
        counts(AUTH_BLOB, TO_CDN, {("GET", "blob", "200"): 1}),
        arm=lambda hub, image: [cdn(Fault("slow", chunk_delay=SLOW))],
        settings={"read_timeout": 0.3},
        cut=True,
        status_page=TIMED_OUT,
    ),
    # --- broken bodies --------------------------------------------------------------------------
    Case(
        "reset-mid-body",
        "manifest",
        502,
        "UNAVAILABLE",
        BROKEN_BODY,
        counts(AUTH_MANIFEST, {("HEAD", "manifest", "200"): 1, ("GET", "manifest", "200"): 1}),
        arm=lambda hub, image: [manifest_path(Fault("reset", method="GET"))],
    ),
    Case(
        "reset-mid-body",
        "blob",
        200,
        None,
        "",
        counts(AUTH_BLOB, TO_CDN, {("GET", "blob", "200"): 1}),
        arm=lambda hub, image: [cdn(Fault("reset"))],
        cut=True,
        status_page=BROKEN_BODY,
    ),
    Case(
        "truncated-body",
        "manifest",
        502,
        "UNAVAILABLE",
        BROKEN_BODY,
        counts(AUTH_MANIFEST, {("HEAD", "manifest", "200"): 1, ("GET", "manifest", "200"): 1}),
        arm=lambda hub, image: [manifest_path(Fault("truncate", method="GET"))],
    ),
    Case(
        "truncated-body",
        "blob",
        200,
        None,
        "",
        counts(AUTH_BLOB, TO_CDN, {("GET", "blob", "200"): 1}),
        arm=lambda hub, image: [cdn(Fault("truncate"))],
        cut=True,
        status_page=BROKEN_BODY,
    ),
    Case(
        "wrong-bytes",
        "manifest",
        502,
        "UNAVAILABLE",
        NO_MATCH.replace("{what}", "a manifest"),
        counts(AUTH_MANIFEST, {("HEAD", "manifest", "200"): 1, ("GET", "manifest", "200"): 1}),
        arm=lambda hub, image: [manifest_path(Fault("corrupt", method="GET"))],
    ),
    Case(
        "wrong-bytes",
        "blob",
        200,
        None,
        "",
        counts(AUTH_BLOB, TO_CDN, {("GET", "blob", "200"): 1}),
        arm=lambda hub, image: [cdn(Fault("corrupt"))],
        cut=True,
        status_page=NO_MATCH.replace("{what}", "bytes"),
    ),
    Case(
        "manifest-not-matching-its-digest",
        "manifest",
        502,
        "UNAVAILABLE",
        NO_MATCH.replace("{what}", "a manifest"),
        counts(AUTH_MANIFEST, {("HEAD", "manifest", "200"): 1, ("GET", "manifest", "200"): 1}),
        arm=lambda hub, image: [
            manifest_path(Fault("replace", method="GET", body=image.other.data))
        ],
    ),
    Case(
        "other-blob-than-asked",
        "blob",
        200,
        None,
        "",
        counts(AUTH_BLOB, TO_CDN, {("GET", "blob", "200"): 1}),
        arm=lambda hub, image: [cdn(Fault("replace", body=image.impostor.data))],
        cut=True,
        status_page=NO_MATCH.replace("{what}", "bytes"),
    ),
    # --- a wrong Docker-Content-Digest --------------------------------------------------------
    Case(
        "wrong-digest-header",
        "manifest",
        502,
        "UNAVAILABLE",
        f"upstream {{upstream}} named {BOGUS_DIGEST} for {REPO}:{TAG} but does not have it",
        counts(AUTH_MANIFEST, {("HEAD", "manifest", "200"): 1, ("GET", "manifest", "404"): 1}),
        arm=lambda hub, image: [
            manifest_path(
                Fault("header", method="HEAD", headers={"Docker-Content-Digest": BOGUS_DIGEST})
            )
        ],
    ),
    Case(
        "wrong-digest-header",
        "blob",
        200,
        None,
        "",
        counts(AUTH_BLOB, TO_CDN, {("GET", "blob", "200"): 1}),
        arm=lambda hub, image: [
            registry_blob(Fault("header", headers={"Docker-Content-Digest": BOGUS_DIGEST})),
            cdn(Fault("header", headers={"Docker-Content-Digest": BOGUS_DIGEST})),
        ],
        caches=True,
    ),
    # --- refusals -----------------------------------------------------------------------------
    Case(
        "401-loop",
        "manifest",
        403,
        "DENIED",
        "upstream {upstream} denied access",
        {("HEAD", "manifest", "401"): 2, ("GET", "token", "200"): 1},
        arm=lambda hub, image: [manifest_path(Fault("status", status=401, times=None))],
    ),
    Case(
        "401-loop",
        "blob",
        403,
        "DENIED",
        "upstream {upstream} denied access",
        {("GET", "blob", "401"): 2, ("GET", "token", "200"): 1},
        arm=lambda hub, image: [registry_blob(Fault("status", status=401, times=None))],
    ),
    Case(
        "token-service-401",
        "manifest",
        502,
        "UNAVAILABLE",
        "upstream {upstream} token service failed: token realm answered 401",
        {("HEAD", "manifest", "401"): 1, ("GET", "token", "401"): 1},
        arm=lambda hub, image: [Fault("status", server="auth", status=401, times=None)],
    ),
    Case(
        "429-retry-after",
        "manifest",
        429,
        "TOOMANYREQUESTS",
        "upstream {upstream} is rate limiting the mirror",
        counts(AUTH_MANIFEST, {("HEAD", "manifest", "429"): 1}),
        arm=lambda hub, image: [
            manifest_path(Fault("status", status=429, headers={"Retry-After": "17"}))
        ],
        headers={"Retry-After": "17"},
    ),
    Case(
        "429-retry-after",
        "blob",
        429,
        "TOOMANYREQUESTS",
        "upstream {upstream} is rate limiting the mirror",
        counts(AUTH_BLOB, {("GET", "blob", "429"): 1}),
        arm=lambda hub, image: [
            registry_blob(Fault("status", status=429, headers={"Retry-After": "17"}))
        ],
        headers={"Retry-After": "17"},
    ),
    Case(
        "500",
        "manifest",
        502,
        "UNAVAILABLE",
        "upstream {upstream} answered HTTP 500",
        counts(AUTH_MANIFEST, {("HEAD", "manifest", "500"): 1}),
        arm=lambda hub, image: [manifest_path(Fault("status", status=500))],
    ),
    Case(
        "500",
        "blob",
        502,
        "UNAVAILABLE",
        "upstream {upstream} answered HTTP 500",
        counts(AUTH_BLOB, {("GET", "blob", "500"): 1}),
        arm=lambda hub, image: [registry_blob(Fault("status", status=500))],
    ),
    Case(
        "503",
        "manifest",
        502,
        "UNAVAILABLE",
        "upstream {upstream} answered HTTP 503",
        counts(AUTH_MANIFEST, {("HEAD", "manifest", "503"): 1}),
        arm=lambda hub, image: [manifest_path(Fault("status", status=503))],
    ),
    Case(
        "503",
        "blob",
        502,
        "UNAVAILABLE",
        "upstream {upstream} answered HTTP 503",
        counts(AUTH_BLOB, TO_CDN, {("GET", "blob", "503"): 1}),
        arm=lambda hub, image: [cdn(Fault("status", status=503))],
    ),
    # --- redirects ----------------------------------------------------------------------------
    Case(
        "redirect-loop",
        "manifest",
        502,
        "UNAVAILABLE",
        "upstream {upstream} redirected more than 10 times",
        counts(AUTH_MANIFEST, {("HEAD", "manifest", "302"): 11}),
        arm=lambda hub, image: [
            manifest_path(redirect_to(f"/v2/{REPO}/manifests/{TAG}", status=302))
        ],
    ),
    Case(
        "redirect-loop",
        "blob",
        502,
        "UNAVAILABLE",
        "upstream {upstream} redirected more than 10 times",
        counts(AUTH_BLOB, TO_CDN, {("GET", "blob", "302"): 10}),
        # The CDN sends every request back to itself (unsigned ones too: its own
        # redirects carry no signature).
        arm=lambda hub, image: [
            cdn(redirect_to(f"/blobs/{image.layer.digest}", status=302, before_auth=True))
        ],
    ),
    Case(
        "redirect-to-file",
        "manifest",
        502,
        "UNAVAILABLE",
        "upstream {upstream} redirected to a file: URL",
        counts(AUTH_MANIFEST, {("HEAD", "manifest", "307"): 1}),
        arm=lambda hub, image: [manifest_path(redirect_to("file:///etc/passwd"))],
    ),
    Case(
        "redirect-to-file",
        "blob",
        502,
        "UNAVAILABLE",
        "upstream {upstream} redirected to a file: URL",
        counts(AUTH_BLOB, {("GET", "blob", "307"): 1}),
        arm=lambda hub, image: [registry_blob(redirect_to("file:///etc/passwd"))],
    ),
    Case(
        "redirect-to-ftp",
        "blob",
        502,
        "UNAVAILABLE",
        "upstream {upstream} redirected to a ftp: URL",
        counts(AUTH_BLOB, TO_CDN, {("GET", "blob", "307"): 1}),
        arm=lambda hub, image: [cdn(redirect_to(f"ftp://127.0.0.1:21/{image.layer.digest}"))],
    ),
]


# --- what a client sees ---------------------------------------------------------------------


@dataclass
class Outcome:
    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes
    cut: bool  # the body broke off before its Content-Length

    def error(self) -> dict[str, str]:
        entry: dict[str, str] = json.loads(self.body)["errors"][0]
        return entry


async def pull(mirror: Client, target: Target, image: Image) -> Outcome:
    if target == "manifest":
        path, headers = f"/v2/{REPO}/manifests/{TAG}", {"Accept": ACCEPT}
    else:
        path, headers = f"/v2/{REPO}/blobs/{image.layer.digest}", {}
    async with mirror.get(path, headers=headers) as resp:
        try:
            body = await resp.read()
        except aiohttp.ClientPayloadError:
            return Outcome(resp.status, resp.reason or "", resp.headers, b"", cut=True)
        return Outcome(resp.status, resp.reason or "", resp.headers, body, cut=False)


def check_outcome(case: Case, outcome: Outcome, upstream_name: str) -> None:
    if case.cut:
        assert (outcome.status, outcome.cut) == (200, True), outcome
        return
    if case.caches:
        assert (outcome.status, outcome.cut) == (200, False), outcome
        return
    assert outcome.status == case.status, outcome
    error = outcome.error()
    assert error["code"] == case.code, error
    assert case.message.format(upstream=upstream_name) in error["message"], error
    if case.status >= 500:
        # Docker and skopeo print a 5xx's status line, not its body: the cause is there too.
        phrase = HTTPStatus(case.status).phrase
        assert outcome.reason.startswith(f"{phrase} (upstream {upstream_name} "), outcome.reason
    for name, value in case.headers.items():
        assert outcome.headers.get(name) == value, outcome.headers


def expected_object(case: Case, image: Image) -> tuple[bytes, set[str]]:
    """The bytes a working pull gets, and the content files it leaves in the cache."""
    if case.target == "manifest":
        digest = image.manifest.digest.removeprefix("sha256:")
        path = f"manifests/sha256/{digest[:2]}/{digest}"
        return image.manifest.data, {path, path + ".type"}
    digest = image.layer.digest.removeprefix("sha256:")
    return image.layer.data, {f"blobs/sha256/{digest[:2]}/{digest}"}


# --- metrics, leaks ---------------------------------------------------------------------------


def upstream_counts(after: Mapping[Any, float], before: Mapping[Any, float]) -> UpstreamCounts:
    """How many upstream requests the scrapes differ by, per (method, kind, status)."""
    found: Counter[tuple[str, str, str]] = Counter()
    for sign, samples in ((1, after), (-1, before)):
        for (name, labels), value in samples.items():
            if name == "mirror_upstream_requests_total":
                label = dict(labels)
                found[(label["method"], label["kind"], label["status"])] += int(sign * value)
    return {key: value for key, value in found.items() if value}


# Connection handlers of the servers in this process (the mirror's and the fake's): they
# live as long as their keep-alive connection, which the socket count below accounts for.
CONNECTION_TASK = "RequestHandler.start"


@dataclass(frozen=True)
class Snapshot:
    """What this process (the mirror, the fake upstream and the test client) holds open."""

    files: Counter[str]  # open fds other than sockets, by what they point at
    connections: Counter[int]  # connected client sockets, by the port they are connected to
    tasks: Counter[str]  # live asyncio tasks but connection handlers, by coroutine

    def __str__(self) -> str:
        return (
            f"files {dict(self.files)}, connections by port {dict(self.connections)}, "
            f"tasks {dict(self.tasks)}"
        )


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1], 16)  # "0100007F:1F90" -> 8080


def _tcp_sockets() -> dict[str, tuple[int, int, str]]:
    """Every TCP socket in this network namespace: inode -> (local port, remote port, state)."""
    sockets: dict[str, tuple[int, int, str]] = {}
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                sockets[inode] = (_port(local), _port(remote), state)
    return sockets


def snapshot() -> Snapshot:
    gc.collect()
    tcp = _tcp_sockets()
    files: Counter[str] = Counter()
    ours: list[tuple[int, int, str]] = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = str(fd.readlink())
        except FileNotFoundError:
            continue  # the fd of the listing itself, closed by now
        if target.startswith("socket:["):
            if (found := tcp.get(target[8:-1])) is not None:
                ours.append(found)
        else:
            files[target] += 1
    listening = {local for local, _, state in ours if state == "0A"}
    # Client ends of connections to the servers in this process (established, or closed
    # by the server and not yet by us): the mirror's to the upstream, the test's to the
    # mirror. A response never released would keep one of them busy, and the next request
    # would open another.
    connections = Counter(
        remote
        for local, remote, state in ours
        if state in ("01", "08") and remote in listening and local not in listening
    )
    current = asyncio.current_task()
    tasks = Counter(
        getattr(task.get_coro(), "__qualname__", "?")
        for task in asyncio.all_tasks()
        if task is not current and not task.done()
    )
    del tasks[CONNECTION_TASK]
    return Snapshot(files, connections, tasks)


async def settled(within: float = SETTLE_SECONDS) -> Snapshot:
    """A snapshot once the process is quiet: the same twice, 50 ms apart."""
    previous = snapshot()
    for _ in range(int(within / 0.05)):
        await asyncio.sleep(0.05)
        now = snapshot()
        if now == previous:
            return now
        previous = now
    return previous


def leaks(now: Snapshot, reference: Snapshot) -> list[str]:
    """What `now` holds that repeating the fault should not have added: files or tasks
    beyond the reference, or more than the one idle keep-alive connection per server that
    requests made one after another leave."""
    found = [f"file {name!r}" for name in (now.files - reference.files)]
    found += [f"task {name}" for name in (now.tasks - reference.tasks)]
    found += [f"{n} connections to port {port}" for port, n in now.connections.items() if n > 1]
    return found


async def nothing_leaked(reference: Snapshot, within: float = SETTLE_SECONDS) -> None:
    """Wait (bounded) until nothing beyond `reference` is held; fail naming what stayed."""

    def held() -> str:
        now = snapshot()
        return (
            f"held after {TRIES} tries: {leaks(now, reference)}; now {now}; "
            f"after the first try {reference}"
        )

    await wait_until(
        lambda: not leaks(snapshot(), reference), within=within, message=held, interval=0.05
    )


async def newest_upstream_error(mirror: Client) -> str:
    resp = await mirror.get("/api/status")
    assert resp.status == 200
    errors = (await resp.json())["recent_errors"]
    assert errors, "the failure is not on the status page"
    message: str = errors[0]["message"]
    return message


# --- the upstreams ------------------------------------------------------------------------------


def make_test_image() -> Image:
    layer = random_layer(BLOB_BYTES, seed=9)
    impostor = random_layer(BLOB_BYTES, seed=10)
    return Image(make_image(layers=[layer]), layer, make_image(seed=10), impostor)


def hub_with(image: Image, **options: Any) -> FakeRegistry:
    hub = FakeRegistry(**options)
    hub.push_image(REPO, TAG, image.manifest)
    return hub


@contextlib.contextmanager
def resolving(name: str, address: str) -> Iterator[None]:
    """Make `name` resolve to `address` in this process (aiohttp's default resolver asks
    `socket.getaddrinfo` in a thread): a DNS failure that has been repaired."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        return real(address if host == name else host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
    try:
        yield
    finally:
        socket.getaddrinfo = real


@dataclass
class Setup:
    mirror: Client
    upstream_name: str  # how the mirror names the upstream in its messages
    hub: FakeRegistry | None  # the faulty fake, when the fault is one it injects
    recover: Callable[[], contextlib.AbstractAsyncContextManager[None]]


@contextlib.asynccontextmanager
async def setup(
    case: Case, image: Image, start_mirror: StartMirror, tmp_path: Path
) -> AsyncIterator[Setup]:
    settings = {"request_timeout": 2.0, "read_timeout": 2.0, **case.settings}
    async with contextlib.AsyncExitStack() as stack:
        if case.transport == "fake":
            hub = await stack.enter_async_context(hub_with(image))
            mirror = await start_mirror(hub.url, **settings)

            @contextlib.asynccontextmanager
            async def cleared() -> AsyncIterator[None]:
                hub.clear_faults()
                yield

            yield Setup(mirror, hub.url.removeprefix("http://"), hub, cleared)
        elif case.transport == "refused":
            port = free_port()
            mirror = await start_mirror(f"http://127.0.0.1:{port}", **settings)

            @contextlib.asynccontextmanager
            async def listening() -> AsyncIterator[None]:
                async with hub_with(image, port=port):
                    yield

            yield Setup(mirror, f"127.0.0.1:{port}", None, listening)
        elif case.transport == "dns":
            hub = await stack.enter_async_context(hub_with(image))
            port = int(hub.url.rsplit(":", 1)[1])
            mirror = await start_mirror(f"http://{UNRESOLVABLE}:{port}", **settings)

            @contextlib.asynccontextmanager
            async def resolved() -> AsyncIterator[None]:
                with resolving(UNRESOLVABLE, "127.0.0.1"):
                    yield

            yield Setup(mirror, f"{UNRESOLVABLE}:{port}", None, resolved)
        else:
            trusted = make_private_ca(tmp_path / "trusted-ca")
            untrusted = make_private_ca(tmp_path / "untrusted-ca")
            hub = await stack.enter_async_context(hub_with(image, tls=untrusted.server_context()))
            url = hub.url
            port = int(url.rsplit(":", 1)[1])
            mirror = await start_mirror(
                url, upstream=docker_io(url, ca_file=str(trusted.ca_file)), **settings
            )

            @contextlib.asynccontextmanager
            async def trusted_certificate() -> AsyncIterator[None]:
                await hub.close()
                async with hub_with(image, tls=trusted.server_context(), port=port):
                    yield

            yield Setup(mirror, url.removeprefix("https://"), None, trusted_certificate)


# --- the matrix ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_upstream_fault(
    case: Case, start_mirror: StartMirror, data_dir: Path, tmp_path: Path
) -> None:
    image = make_test_image()
    async with setup(case, image, start_mirror, tmp_path) as env:
        mirror = env.mirror
        cached_before = content_files(data_dir)

        def arm() -> None:
            if env.hub is not None and case.arm is not None:
                env.hub.clear_faults()
                for fault in case.arm(env.hub, image):
                    env.hub.add_fault(fault)

        # The first try: what the client sees and what the metrics say.
        before = await scrape(mirror)
        arm()
        check_outcome(case, await pull(mirror, case.target, image), env.upstream_name)
        after = await scrape(mirror)
        assert upstream_counts(after, before) == case.upstream
        if case.status_page is not None:
            page = await newest_upstream_error(mirror)
            assert case.status_page.format(upstream=env.upstream_name) in page, page

        # Again and again: the same answer, and nothing left behind that grows.
        reference = await settled()
        for _ in range(TRIES - 1):
            arm()
            check_outcome(case, await pull(mirror, case.target, image), env.upstream_name)
        await nothing_leaked(reference)

        data, files = expected_object(case, image)
        if case.caches:
            assert content_files(data_dir) == cached_before | files
        else:
            assert content_files(data_dir) == cached_before, "nothing may be cached"

        # The fault is gone: the same pull works (nothing bad was remembered).
        async with env.recover():
            outcome = await pull(mirror, case.target, image)
            assert (outcome.status, outcome.cut) == (200, False), outcome
            assert outcome.body == data
        assert content_files(data_dir) == cached_before | files


async def test_a_wrong_digest_from_a_tag_head_is_dropped_when_the_upstream_lacks_it(
    start_mirror: StartMirror, data_dir: Path
) -> None:
    """Docker's flow (HEAD the tag, then GET by digest): a HEAD's digest cannot be checked
    without the bytes, so the client is told the wrong one once; its GET then fails with a
    502 naming the upstream, the tag record is dropped, and the next pull is right."""
    image = make_test_image()
    manifest_url = f"/v2/{REPO}/manifests"
    async with hub_with(image) as hub:
        mirror = await start_mirror(hub.url)
        hub.add_fault(
            manifest_path(
                Fault("header", method="HEAD", headers={"Docker-Content-Digest": BOGUS_DIGEST})
            )
        )
        head = await mirror.head(f"{manifest_url}/{TAG}", headers={"Accept": ACCEPT})
        assert (head.status, head.headers["Docker-Content-Digest"]) == (200, BOGUS_DIGEST)
        resp = await mirror.get(f"{manifest_url}/{BOGUS_DIGEST}", headers={"Accept": ACCEPT})
        assert resp.status == 502
        name = hub.url.removeprefix("http://")
        message = f"upstream {name} named {BOGUS_DIGEST} for {REPO}:{TAG} but does not have it"
        assert message in (await resp.json())["errors"][0]["message"]
        assert content_files(data_dir) == set()

        # The fault was one HEAD: the next pull asks again instead of trusting the record.
        head = await mirror.head(f"{manifest_url}/{TAG}", headers={"Accept": ACCEPT})
        digest = head.headers["Docker-Content-Digest"]
        assert (head.status, digest) == (200, image.manifest.digest)
        resp = await mirror.get(f"{manifest_url}/{digest}", headers={"Accept": ACCEPT})
        assert (resp.status, await resp.read()) == (200, image.manifest.data)
