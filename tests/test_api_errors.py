"""Bad input gets the spec's JSON error and a 4xx, before anything touches disk or upstream."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from mirror.server.responses import ByteRange, parse_range
from testkit.fakeupstream import FakeRegistry, Manifest
from tests.conftest import Client, StartMirror, content_files

SHA = "sha256:" + "a" * 64


async def raw_request(mirror: Client, method: str, target: str) -> tuple[int, bytes]:
    """Send a request line exactly as written (no client-side path normalisation)."""
    server = mirror.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        f"{method} {target} HTTP/1.1\r\nHost: mirror\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


BAD_REQUESTS = [
    ("/v2/Alpine/manifests/latest", 400, "NAME_INVALID"),
    ("/v2/library//alpine/manifests/latest", 400, "NAME_INVALID"),
    ("/v2/" + "a" * 300 + "/manifests/latest", 400, "NAME_INVALID"),
    ("/v2/library/%2e%2e/manifests/latest", 400, "NAME_INVALID"),
    ("/v2/library/%2E%2E/%2E%2E/blobs/" + SHA, 400, "NAME_INVALID"),
    ("/v2/library/alpine%00/manifests/latest", 400, "NAME_INVALID"),
    ("/v2/../../etc/passwd/manifests/latest", 400, "NAME_INVALID"),
    # A manifest reference that is no tag and no digest names nothing: 404, the one failure
    # the spec gives a manifest GET (the OCI conformance suite reads `.INVALID_MANIFEST_NAME`).
    ("/v2/library/alpine/manifests/bad!tag", 404, "MANIFEST_UNKNOWN"),
    ("/v2/library/alpine/manifests/.INVALID_MANIFEST_NAME", 404, "MANIFEST_UNKNOWN"),
    ("/v2/library/alpine/manifests/" + "t" * 129, 404, "MANIFEST_UNKNOWN"),
    ("/v2/library/alpine/manifests/sha256:abc", 404, "MANIFEST_UNKNOWN"),
    ("/v2/library/alpine/manifests/md5:d41d8cd98f00b204e9800998ecf8427e", 404, "MANIFEST_UNKNOWN"),
    ("/v2/Alpine/manifests/.INVALID_MANIFEST_NAME", 400, "NAME_INVALID"),
    ("/v2/library/alpine/blobs/sha256:xyz", 400, "DIGEST_INVALID"),
    ("/v2/library/alpine/blobs/sha256:" + "A" * 64, 400, "DIGEST_INVALID"),
    ("/v2/library/alpine/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", 400, "DIGEST_INVALID"),
    ("/v2/library/alpine/blobs/..%2F..%2Fetc", 400, "DIGEST_INVALID"),
    ("/v2/library/alpine/blobs/latest", 400, "DIGEST_INVALID"),
    ("/v2/library/alpine/tags/list?n=abc", 400, "PAGINATION_NUMBER_INVALID"),
    ("/v2/library/alpine/tags/list?n=99999999999999999999", 400, "PAGINATION_NUMBER_INVALID"),
    ("/v2/library/alpine/tags/list?n=-1", 400, "PAGINATION_NUMBER_INVALID"),
    ("/v2/library/alpine/tags/list?last=a/b", 400, "TAG_INVALID"),
    ("/v2/_catalog?n=x", 400, "PAGINATION_NUMBER_INVALID"),
    # Found by the fuzz tests: these were 500s (int() refuses "²", which str.isdigit()
    # accepts, and strings of more than 4300 digits).
    ("/v2/library/alpine/tags/list?n=%C2%B2", 400, "PAGINATION_NUMBER_INVALID"),
    ("/v2/library/alpine/tags/list?n=" + "9" * 5000, 400, "PAGINATION_NUMBER_INVALID"),
    ("/v2/_catalog?n=%D9%A1", 400, "PAGINATION_NUMBER_INVALID"),
    ("/v2/_catalog?n=" + "1" * 5000, 400, "PAGINATION_NUMBER_INVALID"),
    # ...and "[..]" passed for an IPv6 registry host.
    ("/v2/[..]/library/alpine/manifests/latest", 400, "NAME_INVALID"),
    ("/v2/_catalog?last=Bad", 400, "NAME_INVALID"),
    ("/v2/library/alpine/referrers/sha256:abc", 400, "DIGEST_INVALID"),
    ("/etc/passwd", 404, "NOT_FOUND"),
]


@pytest.mark.parametrize(("target", "status", "code"), BAD_REQUESTS)
async def test_bad_requests_get_json_errors_and_touch_nothing(
    mirror: Client, upstream: FakeRegistry, data_dir: Path, target: str, status: int, code: str
) -> None:
    before = content_files(data_dir)
    got_status, body = await raw_request(mirror, "GET", target)
    assert got_status == status, body
    assert json.loads(body)["errors"][0]["code"] == code
    assert content_files(data_dir) == before == set()
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("method", "path", "refused"),
    [
        ("PUT", "/v2/local/app/manifests/latest", "push to"),
        ("DELETE", "/v2/local/app/manifests/" + SHA, "delete from"),
        ("POST", "/v2/local/app/blobs/uploads/", "push to"),
        ("PATCH", "/v2/local/app/blobs/uploads/4b2f9c1e", "push to"),
        ("PUT", "/v2/local/app/blobs/uploads/4b2f9c1e?digest=" + SHA, "push to"),
        ("DELETE", "/v2/local/app/blobs/uploads/4b2f9c1e", "push to"),
        ("DELETE", "/v2/local/app/blobs/" + SHA, "delete from"),
    ],
)
async def test_anonymous_clients_never_push_or_delete(
    start_mirror: StartMirror, upstream: FakeRegistry, method: str, path: str, refused: str
) -> None:
    # Without htpasswd every client is anonymous; no login would help, so 403, not 401.
    mirror = await start_mirror(upstream.url, hosted=["local/*"])
    resp = await mirror.request(method, path, data=b"{}")
    assert resp.status == 403
    error = (await resp.json())["errors"][0]
    assert error["code"] == "DENIED"
    assert error["message"] == (
        f"anonymous clients may not {refused} hosted/local/app on this mirror: it "
        "authenticates no one (set htpasswd to let users push)"
    )
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("method", "reference", "code"),
    [
        ("PUT", "sha256:totallywrong", "DIGEST_INVALID"),
        ("PUT", "md5:d41d8cd98f00b204e9800998ecf8427e", "DIGEST_INVALID"),
        ("PUT", ".INVALID_MANIFEST_NAME", "TAG_INVALID"),
        ("DELETE", "sha256:abc", "DIGEST_INVALID"),
    ],
)
async def test_a_malformed_reference_to_write_is_a_bad_request_before_the_refusal(
    mirror: Client, upstream: FakeRegistry, method: str, reference: str, code: str
) -> None:
    """The client's mistake is named first (the conformance suite PUTs `sha256:totallywrong`
    and wants a 400 with a spec code), whether or not the repository takes writes."""
    resp = await mirror.request(method, f"/v2/library/alpine/manifests/{reference}", data=b"{}")
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["code"] == code
    assert upstream.requests == []


async def test_head_of_a_reference_that_names_nothing_is_a_bodiless_404(
    mirror: Client, upstream: FakeRegistry
) -> None:
    resp = await mirror.head("/v2/library/alpine/manifests/.INVALID_MANIFEST_NAME")
    assert resp.status == 404
    assert await resp.read() == b""
    assert upstream.requests == []


async def test_read_only_message_says_so(mirror: Client) -> None:
    resp = await mirror.put("/v2/library/alpine/manifests/latest", data=b"{}")
    assert "read-only" in (await resp.json())["errors"][0]["message"]


async def test_other_methods_are_unsupported(mirror: Client) -> None:
    resp = await mirror.post("/v2/", data=b"{}")
    assert resp.status == 405
    assert (await resp.json())["errors"][0]["code"] == "UNSUPPORTED"


async def test_head_errors_have_status_and_no_body(mirror: Client) -> None:
    resp = await mirror.head("/v2/Alpine/manifests/latest")
    assert resp.status == 400
    assert await resp.read() == b""


async def test_leading_zeros_in_n_are_only_zeros(mirror: Client, alpine: Manifest) -> None:
    resp = await mirror.get("/v2/library/alpine/tags/list?n=" + "0" * 5000 + "1")
    assert resp.status == 200
    assert (await resp.json())["tags"] == ["3.19"]


@pytest.mark.parametrize(
    ("header", "status", "content_range"),
    [
        ("bytes=" + "1" * 5000 + "-", 416, "bytes */{size}"),
        ("bytes=0-" + "9" * 5000, 206, "bytes 0-{last}/{size}"),
        ("bytes=-" + "9" * 5000, 206, "bytes 0-{last}/{size}"),
        ("bytes=" + "0" * 5000 + "1-", 206, "bytes 1-{last}/{size}"),
    ],
)
async def test_range_numbers_of_any_length_get_an_answer(
    mirror: Client, alpine: Manifest, header: str, status: int, content_range: str
) -> None:
    """Found by the fuzz tests: a Range number of more than 4300 digits was a 500, both
    while the blob streamed from upstream and once it was cached."""
    blob = alpine.layers[0]
    expected = content_range.format(size=blob.size, last=blob.size - 1)
    for _ in ("streamed", "cached"):
        resp = await mirror.get(
            f"/v2/library/alpine/blobs/{blob.digest}", headers={"Range": header}
        )
        assert resp.status == status
        assert resp.headers["Content-Range"] == expected
        if status == 206:
            start = int(expected.split()[1].split("-")[0])
            assert await resp.read() == blob.data[start:]
        else:
            assert (await resp.json())["errors"][0]["code"] == "RANGE_INVALID"


def test_range_digits_are_ascii_only() -> None:
    """`\\d` matched any script's digits: "bytes=\u0663-" (an Arabic-Indic 3) was a range."""
    assert parse_range("bytes=\u0663-", 10) is None
    assert parse_range("bytes=3-", 10) == ByteRange(3, 10)
