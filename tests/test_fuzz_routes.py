"""Hostile requests against the real in-process mirror: whatever arrives, the answer is a 4xx
with the spec's JSON error body (or a good 2xx/304/206 for a valid request), never a 5xx;
nothing is written outside the data dir, the data dir only gets content of real images,
no host but the configured upstream is connected to, and nothing is logged as an error.

Hypothesis cannot drive async tests, so each test here is a plain function running its
examples on an event loop of its own (`Fuzzed`, in `tests/fuzz_harness.py`), with one
mirror, one fake docker.io and one `ConnectionCounter` (where a host nobody configured would
be) per module. Requests go over raw sockets, byte for byte as written: no client normalises
`..`, `%2e` or `//`. What they are made of is in `tests/fuzz_strategies.py`.

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

import json
import logging
import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testkit.fakeupstream import Blob
from tests.conftest import files_under
from tests.fuzz_harness import (
    ALPINE,
    BLOB_DIGESTS,
    DOCKER_HUB_NAMES,
    ELSEWHERE,
    MANIFEST_DIGEST,
    MAX_LINE,
    MAX_TAGS_PAGE,
    Answer,
    Fuzzed,
    LogCollector,
    assert_answer,
    assert_refused_by_parser,
    fuzz,
)
from tests.fuzz_strategies import HOSTS, NUMBERS, headers, methods, pct, ranges, targets
from tests.specgrammar import SPEC_NAME


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    harness = Fuzzed(tmp_path_factory.mktemp("fuzz"))
    handler = LogCollector(harness.records)
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


def http_get(target: bytes, *extra: bytes) -> bytes:
    """A GET of `target` as written, with `extra` header lines, closing the connection."""
    return b"\r\n".join([b"GET " + target + b" HTTP/1.1", b"Host: mirror", *extra]) + (
        b"\r\nConnection: close\r\n\r\n"
    )


MANIFEST_TARGET = b"/v2/library/alpine/manifests/3.19"
MALFORMED: list[tuple[str, bytes]] = [
    ("path of 8 KB", http_get(b"/v2/" + b"a/" * 4000 + b"manifests/latest")),
    ("request line over 8190 bytes", http_get(b"/v2/" + b"a" * 9000 + b"/manifests/latest")),
    ("request line of 64 KB", http_get(b"/v2/" + b"%2e%2e/" * 10000 + b"manifests/x")),
    ("header over 8190 bytes", http_get(MANIFEST_TARGET, b"X-Long: " + b"a" * 9000)),
    (
        "Range of 8000 digits",
        http_get(
            b"/v2/library/alpine/blobs/" + BLOB_DIGESTS[0].encode(),
            b"Range: bytes=" + b"9" * 8000 + b"-",
        ),
    ),
    ("500 headers", http_get(MANIFEST_TARGET, *[b"X-H%d: v" % i for i in range(500)])),
    ("NUL in the path", http_get(b"/v2/library/alpine\x00/manifests/3.19")),
    ("space in the path", http_get(b"/v2/library/alpine /manifests/3.19")),
    ("raw non-ASCII in the path", http_get("/v2/library/alpïne/manifests/3.19".encode())),
    ("invalid UTF-8 in the path", http_get(b"/v2/library/\xff\xfe/manifests/3.19")),
    ("CR in the path", http_get(b"/v2/library/al\rpine/manifests/3.19")),
    ("fragment", http_get(MANIFEST_TARGET + b"#frag")),
    ("backslashes", http_get(b"/v2/library\\..\\..\\etc/manifests/x")),
    ("absolute-form to elsewhere", http_get(f"http://{ELSEWHERE}/v2/".encode())),
    ("absolute-form to a name", http_get(b"http://evil.example" + MANIFEST_TARGET)),
    ("absolute-form, https", http_get(b"https://evil.example:443" + MANIFEST_TARGET)),
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
    ("two Hosts", http_get(b"/v2/", b"Host: evil.example")),
    ("bad method token", b"G(ET / HTTP/1.1\r\nHost: m\r\n\r\n"),
    ("lower-case method", http_get(b"/v2/").replace(b"GET", b"get", 1)),
    ("unknown method", http_get(b"/v2/").replace(b"GET", b"BREW", 1)),
    ("NUL in the method", http_get(b"/v2/").replace(b"GET", b"GE\x00T", 1)),
    ("HTTP/2.0 in text", http_get(b"/v2/").replace(b"HTTP/1.1", b"HTTP/2.0", 1)),
    ("HTTP/9.9", http_get(b"/v2/").replace(b"HTTP/1.1", b"HTTP/9.9", 1)),
    ("no version", b"GET /v2/\r\n\r\n"),
    ("bare LF", b"GET /v2/ HTTP/1.1\nHost: m\nConnection: close\n\n"),
    ("folded header", http_get(b"/v2/", b"X-A: 1", b" folded")),
    ("space in a header name", http_get(b"/v2/", b"X A: 1")),
    ("header without colon", http_get(b"/v2/", b"NoColon")),
    ("NUL in a header value", http_get(b"/v2/", b"X-A: a\x00b")),
    ("Content-Length: abc", http_get(b"/v2/", b"Content-Length: abc")),
    ("Content-Length: -1", http_get(b"/v2/", b"Content-Length: -1")),
    ("Content-Length twice", http_get(b"/v2/", b"Content-Length: 1", b"Content-Length: 2")),
    ("CL and TE", http_get(b"/v2/", b"Content-Length: 3", b"Transfer-Encoding: chunked")),
    ("bad chunking", http_get(b"/v2/", b"Transfer-Encoding: chunked") + b"zz\r\nabc\r\n"),
    ("Transfer-Encoding: gzip", http_get(b"/v2/", b"Transfer-Encoding: gzip")),
    ("TLS ClientHello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64),
    ("garbage", b"\xff\xfe\xfd\r\n\r\n"),
]


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
