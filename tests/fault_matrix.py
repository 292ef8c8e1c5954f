"""The machinery of the upstream fault matrix (`test_fault_matrix_manifest` and `_blob`): the
shape of a row, the words its tables are written in, the upstreams a row runs against, what
a client sees, and `check_fault`, which runs one row.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

import aiohttp

from testkit.fakeupstream import Blob, FakeRegistry, Fault, Manifest, make_image, random_layer
from testkit.mirrorproc import free_port
from testkit.tls import make_private_ca
from tests.conftest import Client, StartMirror, content_files, docker_io
from tests.leaks import nothing_leaked, settled
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
            url = f"http://{UNRESOLVABLE}:{port}"
            # The fake's token realm is on 127.0.0.1, outside the upstream's name: allowed.
            upstream = docker_io(url, token_hosts=["127.0.0.1"])
            mirror = await start_mirror(url, upstream=upstream, **settings)

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


# --- one row ------------------------------------------------------------------------------------


async def check_fault(
    case: Case, start_mirror: StartMirror, data_dir: Path, tmp_path: Path
) -> None:
    """Pull the row's object through a mirror whose upstream has the row's fault, and check:

    - what the client sees: a JSON error naming the upstream, or, when the fault strikes after
      the blob's response has begun, a transfer cut before its last byte (never a complete one);
    - what the cache holds: nothing new, and no temp files once the request is over;
    - what the metrics say: exactly which upstream requests were counted with which status, and
      the failure on the status page's list of recent upstream errors;
    - that nothing leaks: the same fault repeated leaves no more file descriptors and no more
      asyncio tasks than the first time did;
    - that the same pull works as soon as the fault is gone.
    """
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
        await nothing_leaked(reference, tries=TRIES)

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
