"""Upstream faults against a cold manifest pull by tag, one row each. For every row
(`fault_matrix.check_fault`): the JSON error the client sees, nothing cached, exactly which
upstream requests the metrics count, nothing leaked when the fault repeats, and the same
pull working as soon as the fault is gone.

Decisions the table records: a 401 the upstream keeps sending after the mirror fetched a
fresh token is `403 DENIED` (the upstream refuses access; retrying will not help, and a 5xx
would send clients looking for an outage); manifests are not tested against a slow body, as
they are smaller than one chunk of the fake's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.fakeupstream import Fault
from tests.conftest import StartMirror, content_files
from tests.fault_matrix import (
    ACCEPT,
    AUTH_MANIFEST,
    BOGUS_DIGEST,
    BROKEN_BODY,
    NO_MATCH,
    REPO,
    SLOW,
    TAG,
    TIMED_OUT,
    UNREACHABLE,
    Case,
    check_fault,
    counts,
    hub_with,
    make_test_image,
    manifest_path,
    redirect_to,
)

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
        "dns-failure",
        "manifest",
        503,
        "UNAVAILABLE",
        UNREACHABLE,
        {("HEAD", "manifest", "error"): 1},
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
        "dropped-connection",
        "manifest",
        502,
        "UNAVAILABLE",
        "upstream {upstream} closed the connection without answering",
        counts(AUTH_MANIFEST, {("HEAD", "manifest", "error"): 1}),
        # aiohttp resends a request whose connection closed unanswered once: drop both.
        arm=lambda hub, image: [manifest_path(Fault("drop", times=None))],
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
        "truncated-body",
        "manifest",
        502,
        "UNAVAILABLE",
        BROKEN_BODY,
        counts(AUTH_MANIFEST, {("HEAD", "manifest", "200"): 1, ("GET", "manifest", "200"): 1}),
        arm=lambda hub, image: [manifest_path(Fault("truncate", method="GET"))],
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
    # --- a wrong Docker-Content-Digest --------------------------------------------------------
    Case(
        "wrong-digest-header",
        "manifest",
        502,
        "UNAVAILABLE",
        f"upstream {{upstream}} named {BOGUS_DIGEST} for {REPO}:{TAG} but does not have it",
        # The digest's 404, then the tag's GET (some registries serve a rewrite only by
        # tag), whose bytes are not the digest named either.
        counts(
            AUTH_MANIFEST,
            {
                ("HEAD", "manifest", "200"): 1,
                ("GET", "manifest", "404"): 1,
                ("GET", "manifest", "200"): 1,
            },
        ),
        arm=lambda hub, image: [
            manifest_path(
                Fault("header", method="HEAD", headers={"Docker-Content-Digest": BOGUS_DIGEST})
            )
        ],
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
        "500",
        "manifest",
        502,
        "UNAVAILABLE",
        "upstream {upstream} answered HTTP 500",
        counts(AUTH_MANIFEST, {("HEAD", "manifest", "500"): 1}),
        arm=lambda hub, image: [manifest_path(Fault("status", status=500))],
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
        "redirect-to-file",
        "manifest",
        502,
        "UNAVAILABLE",
        "upstream {upstream} redirected to a file: URL",
        counts(AUTH_MANIFEST, {("HEAD", "manifest", "307"): 1}),
        arm=lambda hub, image: [manifest_path(redirect_to("file:///etc/passwd"))],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_upstream_fault(
    case: Case, start_mirror: StartMirror, data_dir: Path, tmp_path: Path
) -> None:
    await check_fault(case, start_mirror, data_dir, tmp_path)


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
