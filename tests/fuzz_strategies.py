"""Hypothesis strategies for hostile requests (`test_fuzz_routes`): path segments that
parsers get wrong, registry names that name other hosts, references, queries, methods,
header values and Range headers, with the fixed lists of known troublemakers they draw on."""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import strategies as st

from tests.fuzz_harness import BLOB_DIGESTS, ELSEWHERE, MANIFEST_DIGEST
from tests.specgrammar import components


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
