"""Upstream faults against a cold blob pull, one row each. For every row
(`fault_matrix.check_fault`): what the client sees (a JSON error naming the upstream, or, when
the fault strikes after the blob's response has begun, a transfer cut before its last byte,
never a complete one), nothing cached, exactly which upstream requests the metrics count and
the failure on the status page, nothing leaked when the fault repeats, and the same pull
working as soon as the fault is gone.

Decisions the table records: a 401 the upstream keeps sending after the mirror fetched a
fresh token is `403 DENIED`; a wrong `Docker-Content-Digest` on a blob is ignored (blob bytes
are checked against the digest the client asked for).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.fakeupstream import Fault
from tests.conftest import StartMirror
from tests.fault_matrix import (
    AUTH_BLOB,
    BOGUS_DIGEST,
    BROKEN_BODY,
    NO_MATCH,
    SLOW,
    TIMED_OUT,
    TO_CDN,
    UNREACHABLE,
    Case,
    cdn,
    check_fault,
    counts,
    redirect_to,
    registry_blob,
)

CASES = [
    # --- no answer at all -------------------------------------------------------------------
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
        "blob",
        503,
        "UNAVAILABLE",
        UNREACHABLE,
        {("GET", "blob", "error"): 1},
        transport="dns",
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
        "blob",
        403,
        "DENIED",
        "upstream {upstream} denied access",
        {("GET", "blob", "401"): 2, ("GET", "token", "200"): 1},
        arm=lambda hub, image: [registry_blob(Fault("status", status=401, times=None))],
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
        "blob",
        502,
        "UNAVAILABLE",
        "upstream {upstream} answered HTTP 500",
        counts(AUTH_BLOB, {("GET", "blob", "500"): 1}),
        arm=lambda hub, image: [registry_blob(Fault("status", status=500))],
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


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_upstream_fault(
    case: Case, start_mirror: StartMirror, data_dir: Path, tmp_path: Path
) -> None:
    await check_fault(case, start_mirror, data_dir, tmp_path)
