"""The fuzz tests' harness (`test_fuzz_routes`): the real mirror in process in front of a fake
docker.io, with a `ConnectionCounter` where a host nobody configured would be, raw-socket
requests, and the invariants checked after every one of them (no connection but to the
upstream, no file outside the data dir, only real content inside it, only valid names asked
upstream, no error logged)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.test_utils import TestServer
from hypothesis import settings

from mirror import config
from mirror.server.app import create_app
from mirror.upstream.lists import SQLITE_FILE
from testkit.fakeupstream import FakeRegistry, make_image, make_layer
from tests.conftest import files_under, toml_value
from tests.connections import ConnectionCounter
from tests.specgrammar import SPEC_DIGEST, SPEC_NAME, SPEC_TAG

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
        files by those digests too (or the readiness probe); nothing else but the records."""
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
            else:  # the metadata store's files, the kept tag lists' (upstream.lists) and the
                # count of what the store holds, shared by its processes (storage.usage)
                assert len(parts) == 1, path
                assert parts[0] == "usage" or parts[0].startswith(("meta.", SQLITE_FILE)), path

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
            match = re.fullmatch(
                r"/v2/(.+)/(manifests|blobs|tags|referrers)/([^/]+)", recorded.path
            )
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
            elif kind == "referrers":  # a subject's referrers: by digest only
                assert SPEC_DIGEST.fullmatch(ref), recorded.path
                assert set(recorded.query) <= {"artifactType"}, recorded.raw_query
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


class LogCollector(logging.Handler):
    """Keeps every WARNING and above, whichever logger, for `Fuzzed.check` to judge."""

    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.WARNING)
        self._records = records

    def emit(self, record: logging.LogRecord) -> None:
        self._records.append(record)


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
