"""Hostile requests against the real in-process mirror: whatever arrives, the answer is a 4xx
with the spec's JSON error body (or a good 2xx/304/206 for a valid request), never a 5xx;
nothing is written outside the data dir, the data dir only gets content of real images,
no host but the configured upstream is connected to, and nothing is logged as an error.

Hypothesis cannot drive async tests, so each test here is a plain function running its
examples on an event loop of its own (`Fuzzed`), with one mirror, one fake docker.io and
one `ConnectionCounter` (where a host nobody configured would be) per module. Requests go
over raw sockets, byte for byte as written: no client normalises `..`, `%2e` or `//`.

Malformed HTTP (a request line or header past aiohttp's 8190-byte limits, NUL or raw
spaces in the target, bad versions, bad framing) never reaches the mirror: aiohttp's
parser answers it itself with a 400, `Content-Type: text/plain`, its parser's message as
the body (not JSON) and no `Docker-Distribution-API-Version` header, then closes the
connection. aiohttp logs each such request on `aiohttp.server` at ERROR with a traceback
(but an unknown method on a connection's first request at DEBUG). `test_malformed_http`
pins exactly that and tolerates only those log records. Absolute-form targets
(`GET http://evil.example/v2/...`) and CONNECT are not proxied: the authority is ignored
and the path served (or 404) as if it came alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from mirror import config
from mirror.server.app import create_app
from testkit.fakeupstream import Blob, FakeRegistry, make_image, make_layer
from tests.conftest import files_under, toml_value
from tests.connections import ConnectionCounter
from tests.specgrammar import SPEC_DIGEST, SPEC_NAME, SPEC_TAG, components

T = TypeVar("T")

ALPINE = make_image(
    layers=[make_layer({"bin/sh": b"#!fake shell\n"}), make_layer({"etc/os": b"3.19\n"})]
)
MANIFEST_DIGEST = ALPINE.digest
BLOB_DIGESTS = [blob.digest for blob in ALPINE.blobs]
ELSEWHERE = "{elsewhere}"  # replaced by the ConnectionCounter's address when sent
MAX_TAGS_PAGE = 10_000
# What the only configured upstream answers to (the Kelvin sign lower-cases to "k").
DOCKER_HUB_NAMES = {"docker.io", "index.docker.io", "registry-1.docker.io"}
MAX_LINE = 8190  # aiohttp's limit on the request line and on each header line
TIMEOUT = 10.0  # seconds one exchange may take before the test fails (never reached)

# Where a path ends up if some parser lets `..` through: the data dir sits three levels
# below the directory whose tree is compared after every example.
DATA_DIR_DEPTH = ("srv", "mirror", "data")


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None)


# --- the harness ------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int  # 0: the connection closed without a status line
    headers: dict[str, str]  # lower-case names
    body: bytes

    def error_code(self) -> str:
        """The spec's error body: `{"errors": [{"code", "message", ...}]}`."""
        assert self.headers.get("content-type", "").startswith("application/json"), self
        errors = json.loads(self.body)["errors"]
        assert isinstance(errors, list) and errors, self
        assert isinstance(errors[0]["code"], str) and isinstance(errors[0]["message"], str)
        return str(errors[0]["code"])


@dataclass
class Fuzzed:
    """The mirror under attack, with everything the invariants are checked against."""

    root: Path
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    records: list[logging.LogRecord] = field(default_factory=list)
    connected: list[tuple[str, int]] = field(default_factory=list)
    looked_up: list[str] = field(default_factory=list)
    known_digests: set[str] = field(default_factory=lambda: {MANIFEST_DIGEST, *BLOB_DIGESTS})
    exchanges: int = 0

    @property
    def data_dir(self) -> Path:
        return self.root.joinpath(*DATA_DIR_DEPTH)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, TIMEOUT))

    async def start(self) -> None:
        self._watch_outgoing_connections()
        self.upstream = FakeRegistry()
        await self.upstream.start()
        self.upstream.push_image("library/alpine", "3.19", ALPINE)
        self.upstream.push_image("library/alpine", "latest", ALPINE)
        self.elsewhere = ConnectionCounter()
        await self.elsewhere.__aenter__()
        settings = {
            "data_dir": str(self.data_dir),
            "builtin_upstreams": False,
            "upstream": [{"host": "docker.io", "url": self.upstream.url}],
            "connect_timeout": 2.0,
            "read_timeout": 5.0,
        }
        file = self.root / "mirror.toml"
        file.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in settings.items()))
        app = await create_app(config.load(config_file=file, environ={}).config)
        self.server = TestServer(app)
        await self.server.start_server()
        self.allowed_ports = {self.server.port, *self._upstream_ports()}
        self.outside_before = self._outside_files()

    async def close(self) -> None:
        await self.server.close()
        await self.elsewhere.__aexit__()
        await self.upstream.close()

    def _upstream_ports(self) -> set[int]:
        urls = (self.upstream.url, self.upstream.auth_url, self.upstream.cdn_url)
        return {int(url.split("/")[2].rsplit(":", 1)[1]) for url in urls}

    def _watch_outgoing_connections(self) -> None:
        """Record every TCP connect and name lookup made on this loop (the mirror's upstream
        client, and this harness's own connections to the mirror)."""
        connect, lookup = self.loop.sock_connect, self.loop.getaddrinfo

        async def sock_connect(sock: socket.socket, address: Any) -> None:
            self.connected.append((str(address[0]), int(address[1])))
            await connect(sock, address)

        async def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            self.looked_up.append(str(host))
            return await lookup(host, *args, **kwargs)

        self.loop.sock_connect = sock_connect  # type: ignore[method-assign]
        self.loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]

    # --- requests ---------------------------------------------------------------------------

    def send(self, raw: bytes) -> Answer:
        """Send `raw` as it is (ELSEWHERE filled in) and read the answer until close."""
        raw = raw.replace(ELSEWHERE.encode(), self.elsewhere.address.encode())
        answer = self.run(self._exchange(raw))
        self.exchanges += 1
        return answer

    def request(self, method: str, target: str, headers: dict[str, bytes] | None = None) -> Answer:
        lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: mirror", b"Connection: close"]
        lines += [name.encode() + b": " + value for name, value in (headers or {}).items()]
        return self.send(b"\r\n".join(lines) + b"\r\n\r\n")

    async def _exchange(self, raw: bytes) -> Answer:
        reader, writer = await asyncio.open_connection(self.server.host, self.server.port)
        data = b""
        try:
            writer.write(raw)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(65536):
                    data += chunk
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        # Let the mirror finish what the answer started (a download's commit, a log line).
        for _ in range(5):
            await asyncio.sleep(0)
        return _parse_answer(data)

    # --- invariants -------------------------------------------------------------------------

    def check(self) -> None:
        """What must hold after every request, whatever it was."""
        assert self.elsewhere.connections == 0
        for host, port in self.connected:
            assert host == "127.0.0.1" and port in self.allowed_ports, (host, port)
        assert set(self.looked_up) <= {"127.0.0.1"}, self.looked_up
        assert self._outside_files() == self.outside_before
        self._check_data_dir()
        self._check_upstream_requests()
        self._check_logs()

    def _outside_files(self) -> set[str]:
        data = str(self.data_dir.relative_to(self.root))
        return {p for p in files_under(self.root) if not p.startswith(data + "/")}

    def _check_data_dir(self) -> None:
        """Content files are named by digests of content the upstream really has; temp
        files by those digests too (or the readiness probe)."""
        hexes = {d.split(":", 1)[1] for d in self.known_digests}
        for path in files_under(self.data_dir):
            parts = path.split("/")
            if parts[0] in ("blobs", "manifests"):
                assert len(parts) == 4 and parts[1] == "sha256", path
                name = parts[3].removesuffix(".type") if parts[0] == "manifests" else parts[3]
                assert name in hexes and parts[2] == name[:2], path
            elif parts[0] == "tmp":
                assert len(parts) == 2, path
                name = parts[1]
                assert name.startswith("ready.") or any(h in name for h in hexes), path
            else:
                assert len(parts) == 1 and parts[0].startswith("meta."), path

    def _check_upstream_requests(self) -> None:
        """The upstream was only ever asked about valid names, tags and digests."""
        for recorded in self.upstream.requests:
            if recorded.server == "auth":
                scope = recorded.query.get("scope", "")
                match = re.fullmatch(r"repository:(.+):pull", scope)
                assert match and SPEC_NAME.fullmatch(match.group(1)), scope
                continue
            if recorded.server == "cdn":
                assert re.fullmatch(r"/blobs/sha256:[0-9a-f]{64}", recorded.path), recorded
                continue
            if recorded.path == "/v2/":
                continue
            match = re.fullmatch(r"/v2/(.+)/(manifests|blobs|tags)/([^/]+)", recorded.path)
            assert match, recorded.path
            name, kind, ref = match.groups()
            assert SPEC_NAME.fullmatch(name) and len(name) <= 255, recorded.path
            if kind == "tags":
                assert ref == "list", recorded.path
                assert set(recorded.query) <= {"n", "last"}, recorded.raw_query
                if "last" in recorded.query:
                    assert SPEC_TAG.fullmatch(recorded.query["last"]), recorded.raw_query
                if "n" in recorded.query:
                    assert 0 <= int(recorded.query["n"]) <= MAX_TAGS_PAGE, recorded.raw_query
            else:
                assert SPEC_TAG.fullmatch(ref) or SPEC_DIGEST.fullmatch(ref), recorded.path

    def _check_logs(self) -> None:
        for record in self.records:
            if record.levelno < logging.ERROR and "unhandled" not in record.getMessage():
                continue
            # aiohttp's own refusal of malformed HTTP is logged by the connection, which may
            # outlive its example: one can show up among a later example's records.
            if _is_parser_error(record):
                continue
            pytest.fail(f"{record.name}: {record.getMessage()} {record.exc_info!r}")


def _is_parser_error(record: logging.LogRecord) -> bool:
    """aiohttp's own log line for a request its HTTP parser refused."""
    exc = record.exc_info[1] if record.exc_info else None
    return record.name == "aiohttp.server" and isinstance(exc, HttpProcessingError)


def _parse_answer(data: bytes) -> Answer:
    if not data:
        return Answer(0, {}, b"")
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return Answer(status, headers, body)


def _dechunk(data: bytes) -> bytes:
    body = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        body, data = body + data[:size], data[size + 2 :]
    return body


class _Collect(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.WARNING)
        self._records = records

    def emit(self, record: logging.LogRecord) -> None:
        self._records.append(record)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    harness = Fuzzed(tmp_path_factory.mktemp("fuzz"))
    handler = _Collect(harness.records)
    logging.getLogger().addHandler(handler)
    try:
        harness.run(harness.start())
        yield harness
        harness.run(harness.close())
    finally:
        logging.getLogger().removeHandler(handler)
        harness.loop.close()


@pytest.fixture
def clean_logs(fuzzed: Fuzzed) -> Iterator[Fuzzed]:
    """Each test judges only the log records of its own requests."""
    fuzzed.records.clear()
    yield fuzzed


def assert_refused_by_parser(answer: Answer) -> None:
    """aiohttp's own answer to what is not HTTP it parses: a plain-text 400."""
    assert answer.status == 400, answer
    assert answer.headers["content-type"].startswith("text/plain"), answer
    assert "docker-distribution-api-version" not in answer.headers


def assert_answer(answer: Answer, method: str) -> None:
    """Never a 5xx; an error is the spec's JSON (no body at all for HEAD)."""
    assert 100 <= answer.status < 500, answer
    assert answer.headers.get("docker-distribution-api-version") == "registry/2.0", answer
    if method == "HEAD":
        assert answer.body == b""
    elif answer.status >= 400:
        answer.error_code()
    else:
        assert answer.status in (200, 206, 304), answer


# --- strategies -----------------------------------------------------------------------------


def pct(text: str) -> str:
    """Percent-encode everything (lone surrogates as the bytes UTF-8 would give them)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


SEGMENTS = [
    "..",
    ".",
    "%2e%2e",
    "%2E%2E",
    ".%2e",
    "%2e.",
    "%252e%252e",
    "%00",
    "a%00b",
    "%2F",
    "%2f..%2f..",
    "..%2F..%2Fetc%2Fpasswd",
    "%5C..%5C",
    "",
    "%",
    "%zz",
    "%C0%AE%C0%AE",
    "%FF",
    "%0d%0aX-Injected:%20yes",
    "etc",
    "passwd",
    "Alpine",
    "a" * 300,
    "library",
    "alpine",
    "-x",
    "a___b",
    "x.y",
    "%20",
    "~",
    ";",
    "+",
    "@",
    ":",
    "sha256:",
    ELSEWHERE,
]
HOSTS = [
    ELSEWHERE,
    "127.0.0.1",
    "127.0.0.1:1",
    "localhost",
    "localhost:1",
    "[::1]:1",
    "evil.example",
    "evil.example:443",
    "docker.io.evil.example",
    "docker.io@evil.example",
    "docker.io%2F..%2Fevil.example",
    "%2F",
    "%00",
    "http://evil.example/",
    "ghcr.io",
    "DOCKER.IO",
    "index.docker.io",
    "doc%E2%84%AAer.io",  # a Kelvin sign, which lower-cases to "k"
    "",
]

segments = st.one_of(
    st.sampled_from(SEGMENTS),
    components,
    st.text(max_size=12).map(pct),
    st.text(alphabet="abc019.-_~%:@!$&'()*+,;=", max_size=12),
)
names = st.one_of(
    st.just("library/alpine"),
    st.just("alpine"),
    st.lists(segments, min_size=1, max_size=5).map("/".join),
    st.tuples(st.sampled_from(HOSTS), segments).map("/".join),
)
references = st.one_of(
    st.sampled_from(["latest", "3.19", MANIFEST_DIGEST, "sha256:" + "0" * 64]),
    st.sampled_from(["sha256:" + "A" * 64, "sha512:" + "a" * 64, "md5:x", "sha256:..%2F.."]),
    segments,
)
digests = st.one_of(st.sampled_from(BLOB_DIGESTS), references)
endpoints = st.one_of(
    references.map(lambda r: f"manifests/{r}"),
    digests.map(lambda d: f"blobs/{d}"),
    st.just("tags/list"),
    st.just("blobs/uploads/"),
    segments.map(lambda s: f"blobs/uploads/{s}"),
    digests.map(lambda d: f"referrers/{d}"),
    segments,
)
FIXED_PATHS = [
    "/",
    "/v2",
    "/v2/",
    "/v2/_catalog",
    "/healthz",
    "/readyz",
    "/metrics",
    "/api/status",
    "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/..%2F..%2Fmirror.toml",
    "/static/index.html",
    "//v2//",
    "/v2/../etc/passwd",
    "/V2/",
    "/v2/_catalog/../../x",
    "/%2e%2e/%2e%2e/%2e%2e/mirror.toml",
]
paths = st.one_of(
    st.builds(lambda n, e: f"/v2/{n}/{e}", names, endpoints),
    st.sampled_from(FIXED_PATHS),
    st.lists(segments, max_size=6).map(lambda s: "/" + "/".join(s)),
)
NUMBERS = ["0", "1", "10000", "10001", "-1", "+5", " 5", "1e3", "0x10", "²", "١٢", "9" * 5000]
query_values = st.one_of(
    st.sampled_from(HOSTS),
    st.sampled_from(NUMBERS).map(pct),
    st.sampled_from(SEGMENTS),
    st.integers(-(10**30), 10**30).map(str),
    st.text(max_size=20).map(pct),
)
query_keys = st.sampled_from(["ns", "n", "last", "digest", "mount", "from", "ns", "%00", ""])
queries = st.lists(st.tuples(query_keys, query_values), max_size=4).map(
    lambda pairs: "&".join(f"{key}={value}" for key, value in pairs)
)
targets = st.tuples(paths, queries).map(lambda pq: f"{pq[0]}?{pq[1]}" if pq[1] else pq[0])
methods = st.one_of(
    st.just("GET"),
    st.just("HEAD"),
    # Methods aiohttp's parser knows; others (BREW) are its 400, in test_malformed_http.
    st.sampled_from(["PUT", "POST", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "PURGE"]),
)
# Field values: visible ASCII and obs-text (bytes 0x80-0xff), which HTTP allows.
header_text = st.text(
    alphabet="".join(map(chr, [*range(0x20, 0x7F), *range(0x80, 0x100)])), max_size=60
).map(lambda text: text.encode("latin-1"))
RANGES = [
    "bytes=0-0",
    "bytes=0-",
    "bytes=-1",
    "bytes=-0",
    "bytes=5-1",
    "bytes=99999999999999999999-",
    "bytes=-" + "9" * 5000,
    "bytes=" + "1" * 5000 + "-",
    "bytes=0-" + "9" * 5000,
    "bytes=0-1,2-3",
    "bytes=\u0663-",
    "bytes=1-2-3",
    "items=0-1",
    "bytes=",
    "bytes=-",
    "",
]
ranges = st.one_of(
    st.sampled_from(RANGES),
    st.tuples(st.integers(0, 3000), st.integers(0, 3000)).map(lambda ab: f"bytes={ab[0]}-{ab[1]}"),
    st.integers(0, 3000).map(lambda a: f"bytes={a}-"),
    st.integers(0, 3000).map(lambda b: f"bytes=-{b}"),
    st.text(alphabet="bytes=0123456789-, ", max_size=20),
).map(lambda text: text.encode("utf-8"))
header_names = st.sampled_from(
    ["Accept", "If-None-Match", "X-Request-ID", "User-Agent", "Authorization", "Cookie"]
)
headers = st.tuples(
    st.dictionaries(header_names, header_text, max_size=3),
    st.one_of(st.none(), ranges),
).map(lambda hr: {**hr[0], **({"Range": hr[1]} if hr[1] is not None else {})})


# --- the tests ------------------------------------------------------------------------------


def test_fuzzed_requests(clean_logs: Fuzzed) -> None:
    """Any method, path, query and headers: a 4xx JSON error or a good answer, nothing else."""
    fuzzed = clean_logs

    @fuzz(400)
    @given(method=methods, target=targets, extra=headers)
    def one(method: str, target: str, extra: dict[str, bytes]) -> None:
        answer = fuzzed.request(method, target, extra)
        # Several 5000-digit numbers make a request line past aiohttp's limit.
        too_long = len(f"{method} {target} HTTP/1.1") > MAX_LINE
        if too_long:
            assert_refused_by_parser(answer)
        else:
            assert_answer(answer, method)
        fuzzed.check()

    one()


def test_hostile_registry_names_never_reach_a_host(clean_logs: Fuzzed) -> None:
    """`ns=` and path prefixes that name hosts nobody configured are refused: no
    connection, no name lookup, a 4xx naming the registry."""
    fuzzed = clean_logs
    endpoints_ = st.sampled_from(
        [
            "manifests/latest",
            f"blobs/{BLOB_DIGESTS[0]}",
            "tags/list",
            f"manifests/{MANIFEST_DIGEST}",
        ]
    )

    @fuzz(150)
    @given(
        host=st.one_of(st.sampled_from(HOSTS), st.text(max_size=30).map(pct)),
        endpoint=endpoints_,
        how=st.sampled_from(["ns", "prefix", "ping", "catalog"]),
    )
    def one(host: str, endpoint: str, how: str) -> None:
        target = {
            "ns": f"/v2/library/alpine/{endpoint}?ns={host}",
            "prefix": f"/v2/{host}/library/alpine/{endpoint}",
            "ping": f"/v2/?ns={host}",
            "catalog": f"/v2/_catalog?ns={host}",
        }[how]
        answer = fuzzed.request("GET", target)
        assert_answer(answer, "GET")
        ns = parse_qs(urlsplit(target).query).get("ns", [""])[0]
        if how != "prefix" and ns.lower() not in DOCKER_HUB_NAMES:
            assert answer.status == 404 and answer.error_code() == "NAME_UNKNOWN"
            assert "is not served by this mirror" in json.loads(answer.body)["errors"][0]["message"]
        fuzzed.check()

    one()


def test_range_headers_on_streamed_and_cached_blobs(clean_logs: Fuzzed) -> None:
    """A blob's first GET streams from upstream, the second comes from the cache: the same
    Range gets the same answer from both, and every 206 holds exactly the bytes named."""
    fuzzed = clean_logs
    serial = iter(range(10**9))

    @fuzz(75)
    @given(data=st.binary(max_size=3000), header=ranges)
    def one(data: bytes, header: bytes) -> None:
        blob = Blob(data=next(serial).to_bytes(4, "big") + data, media_type="application/x")
        fuzzed.upstream.push_blob("library/ranges", blob)
        fuzzed.known_digests.add(blob.digest)
        target = f"/v2/library/ranges/blobs/{blob.digest}"
        streamed = fuzzed.request("GET", target, {"Range": header})
        cached = fuzzed.request("GET", target, {"Range": header})
        for answer in (streamed, cached):
            assert_answer(answer, "GET")
            assert_range_answer(answer, header, blob.data)
        assert (streamed.status, streamed.body) == (cached.status, cached.body)
        fuzzed.check()

    one()


def assert_range_answer(answer: Answer, header: bytes, data: bytes) -> None:
    size = len(data)
    single = re.fullmatch(rb"bytes=([0-9]*)-([0-9]*)", header.strip())
    if answer.status == 200:
        assert answer.body == data
    elif answer.status == 206:
        assert single, header
        match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", answer.headers["content-range"])
        assert match, answer.headers
        first, last, total = map(int, match.groups())
        assert total == size and 0 <= first <= last < size
        assert answer.body == data[first : last + 1]
    else:
        assert answer.status == 416, answer
        assert answer.error_code() == "RANGE_INVALID"
        assert answer.headers["content-range"] == f"bytes */{size}"
    if single and single.group(1) and len(single.group(1)) < 10:
        # bytes=first-[last]: ignored when last < first (RFC 9110 14.1.1), else 416 past
        # the end, else a 206 that starts at `first`.
        start, last_text = int(single.group(1)), single.group(2)
        if last_text and len(last_text) < 10 and int(last_text) < start:
            assert answer.status == 200, (header, size)
        elif start >= size:
            assert answer.status == 416, (header, size)
        else:
            assert answer.status == 206, (header, size)
            assert answer.body[:1] == data[start : start + 1]


def test_tag_list_and_catalog_pagination(clean_logs: Fuzzed) -> None:
    """`n` is a number from 0 to 10000 in ASCII digits, or a 400; `last` a tag (a name for
    the catalog), or a 400; a page never holds more than `n` entries."""
    fuzzed = clean_logs
    numbers = st.one_of(
        st.sampled_from([*NUMBERS, "0" * 5000 + "7", "007", ""]),
        st.integers(-5, 20_000).map(str),
        st.text(max_size=8),
    )
    lasts = st.one_of(st.sampled_from(["3.19", "library/alpine", "Bad", "", "a/../b"]), st.text())

    @fuzz(100)
    @given(
        where=st.sampled_from(["/v2/library/alpine/tags/list", "/v2/_catalog"]),
        n=st.one_of(st.none(), numbers),
        last=st.one_of(st.none(), lasts),
    )
    def one(where: str, n: str | None, last: str | None) -> None:
        query = [
            f"{key}={pct(value)}" for key, value in (("n", n), ("last", last)) if value is not None
        ]
        answer = fuzzed.request("GET", where + ("?" + "&".join(query) if query else ""))
        assert_answer(answer, "GET")
        digits = None if n is None else n.lstrip("0") or "0"
        n_valid = n is None or (
            n.isascii()
            and n.isdigit()
            and len(digits or "") <= 5
            and int(digits or "") <= MAX_TAGS_PAGE
        )
        if not n_valid:
            assert answer.status == 400 and answer.error_code() == "PAGINATION_NUMBER_INVALID"
        elif answer.status == 200:
            entries = json.loads(answer.body)["tags" if "tags" in where else "repositories"]
            if digits is not None:
                assert len(entries) <= int(digits)
        else:
            assert answer.status == 400 and answer.error_code() in ("TAG_INVALID", "NAME_INVALID")
        fuzzed.check()

    one()


def malformed_requests() -> list[tuple[str, bytes]]:
    def get(target: bytes, *extra: bytes) -> bytes:
        return b"\r\n".join([b"GET " + target + b" HTTP/1.1", b"Host: mirror", *extra]) + (
            b"\r\nConnection: close\r\n\r\n"
        )

    manifest = b"/v2/library/alpine/manifests/3.19"
    return [
        ("path of 8 KB", get(b"/v2/" + b"a/" * 4000 + b"manifests/latest")),
        ("request line over 8190 bytes", get(b"/v2/" + b"a" * 9000 + b"/manifests/latest")),
        ("request line of 64 KB", get(b"/v2/" + b"%2e%2e/" * 10000 + b"manifests/x")),
        ("header over 8190 bytes", get(manifest, b"X-Long: " + b"a" * 9000)),
        (
            "Range of 8000 digits",
            get(
                b"/v2/library/alpine/blobs/" + BLOB_DIGESTS[0].encode(),
                b"Range: bytes=" + b"9" * 8000 + b"-",
            ),
        ),
        ("500 headers", get(manifest, *[b"X-H%d: v" % i for i in range(500)])),
        ("NUL in the path", get(b"/v2/library/alpine\x00/manifests/3.19")),
        ("space in the path", get(b"/v2/library/alpine /manifests/3.19")),
        ("raw non-ASCII in the path", get("/v2/library/alpïne/manifests/3.19".encode())),
        ("invalid UTF-8 in the path", get(b"/v2/library/\xff\xfe/manifests/3.19")),
        ("CR in the path", get(b"/v2/library/al\rpine/manifests/3.19")),
        ("fragment", get(manifest + b"#frag")),
        ("backslashes", get(b"/v2/library\\..\\..\\etc/manifests/x")),
        ("absolute-form to elsewhere", get(f"http://{ELSEWHERE}/v2/".encode())),
        ("absolute-form to a name", get(b"http://evil.example" + manifest)),
        ("absolute-form, https", get(b"https://evil.example:443" + manifest)),
        (
            "CONNECT elsewhere",
            b"CONNECT " + ELSEWHERE.encode() + b" HTTP/1.1\r\n"
            b"Host: " + ELSEWHERE.encode() + b"\r\nConnection: close\r\n\r\n",
        ),
        ("OPTIONS *", b"OPTIONS * HTTP/1.1\r\nHost: mirror\r\nConnection: close\r\n\r\n"),
        (
            "Host elsewhere",
            b"GET /v2/ HTTP/1.1\r\nHost: " + ELSEWHERE.encode() + b"\r\nConnection: close\r\n\r\n",
        ),
        ("no Host", b"GET /v2/ HTTP/1.1\r\nConnection: close\r\n\r\n"),
        ("two Hosts", get(b"/v2/", b"Host: evil.example")),
        ("bad method token", b"G(ET / HTTP/1.1\r\nHost: m\r\n\r\n"),
        ("lower-case method", get(b"/v2/").replace(b"GET", b"get", 1)),
        ("unknown method", get(b"/v2/").replace(b"GET", b"BREW", 1)),
        ("NUL in the method", get(b"/v2/").replace(b"GET", b"GE\x00T", 1)),
        ("HTTP/2.0 in text", get(b"/v2/").replace(b"HTTP/1.1", b"HTTP/2.0", 1)),
        ("HTTP/9.9", get(b"/v2/").replace(b"HTTP/1.1", b"HTTP/9.9", 1)),
        ("no version", b"GET /v2/\r\n\r\n"),
        ("bare LF", b"GET /v2/ HTTP/1.1\nHost: m\nConnection: close\n\n"),
        ("folded header", get(b"/v2/", b"X-A: 1", b" folded")),
        ("space in a header name", get(b"/v2/", b"X A: 1")),
        ("header without colon", get(b"/v2/", b"NoColon")),
        ("NUL in a header value", get(b"/v2/", b"X-A: a\x00b")),
        ("Content-Length: abc", get(b"/v2/", b"Content-Length: abc")),
        ("Content-Length: -1", get(b"/v2/", b"Content-Length: -1")),
        ("Content-Length twice", get(b"/v2/", b"Content-Length: 1", b"Content-Length: 2")),
        ("CL and TE", get(b"/v2/", b"Content-Length: 3", b"Transfer-Encoding: chunked")),
        ("bad chunking", get(b"/v2/", b"Transfer-Encoding: chunked") + b"zz\r\nabc\r\n"),
        ("Transfer-Encoding: gzip", get(b"/v2/", b"Transfer-Encoding: gzip")),
        ("TLS ClientHello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64),
        ("garbage", b"\xff\xfe\xfd\r\n\r\n"),
    ]


MALFORMED = malformed_requests()


@pytest.mark.parametrize(("what", "raw"), MALFORMED, ids=[what for what, _ in MALFORMED])
def test_malformed_http(clean_logs: Fuzzed, what: str, raw: bytes) -> None:
    """Requests that are not (quite) HTTP: a 4xx, never a 5xx, never a connection."""
    answer = clean_logs.send(raw)
    if answer.status == 0:
        pass  # no answer at all (aiohttp drops some garbage silently): fine
    elif answer.headers.get("content-type", "").startswith("text/plain"):
        assert_refused_by_parser(answer)
    else:
        assert_answer(answer, "GET")
    clean_logs.check()


def test_after_the_fuzzing_the_cache_holds_only_real_content(fuzzed: Fuzzed) -> None:
    """Run last: the catalog names only valid repositories, no temp file is left, and the
    attacks above did not stop the mirror from serving a real pull."""
    answer = fuzzed.request("GET", "/v2/library/alpine/manifests/3.19")
    assert answer.status == 200 and answer.body == ALPINE.data
    catalog = json.loads(fuzzed.request("GET", "/v2/_catalog").body)["repositories"]
    assert catalog and all(SPEC_NAME.fullmatch(name) for name in catalog), catalog
    leftovers = [p for p in files_under(fuzzed.data_dir / "tmp") if not p.endswith(".lock")]
    assert leftovers == []
    fuzzed.check()
