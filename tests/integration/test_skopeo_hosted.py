"""skopeo pushes into hosted repositories and copies back out of them: what comes out is
byte for byte what went in, a multi-arch index included, and a retag promotion uploads no
blob (counted in the mirror's access log). skopeo logs in as an htpasswd user: anonymous
clients never push."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testkit.mirrorserver import MirrorServer
from testkit.skopeo import skopeo
from testkit.upstream import RealUpstream
from tests.client_auth.helpers import write_htpasswd
from tests.integration.accesslog import mirror_requests
from tests.integration.conftest import StartMirror
from tests.integration.skopeocopy import check_dir_copy, check_oci_copy, source

pytestmark = pytest.mark.skopeo

TLS = ("--src-tls-verify=false", "--dest-tls-verify=false")
PUSHER = "pusher:pusher-password"
LOGIN = (f"--src-creds={PUSHER}", f"--dest-creds={PUSHER}")


@pytest.fixture
def mirror(start_mirror: StartMirror, tmp_path: Path) -> MirrorServer:
    user, password = PUSHER.split(":")
    users = write_htpasswd(tmp_path / "htpasswd", {user: password})
    return start_mirror(["--hosted", "local/*", "--htpasswd", str(users)])


def copy(mirror: MirrorServer, src: str, dest: str, *options: str) -> None:
    result = skopeo("copy", *TLS, *LOGIN, *options, src, dest)
    assert result.returncode == 0, f"skopeo copy failed:\n{result.stderr}\n{mirror.stderr}"


def test_an_image_copied_into_a_hosted_repository_copies_back_out_identical(
    mirror: MirrorServer, upstream: RealUpstream, tmp_path: Path
) -> None:
    small = upstream.images["small"]
    hosted = f"docker://{mirror.host}/local/small:1"

    copy(mirror, source(mirror, small), hosted)
    copy(mirror, hosted, f"dir:{tmp_path / 'out'}")

    check_dir_copy(tmp_path / "out", small.digest)
    uploads = mirror_requests(mirror.stderr, "/v2/local/small/blobs/uploads")
    # skopeo may first try mounts its blob-info cache (shared by every containers/image
    # client here) suggests; each one the mirror answers 202 it cancels with a DELETE (204).
    assert uploads and all(
        r.status in (201, 202) or (r.method, r.status) == ("DELETE", 204) for r in uploads
    ), uploads


def test_a_multiarch_index_copies_in_and_out_with_every_platform(
    mirror: MirrorServer, upstream: RealUpstream, tmp_path: Path
) -> None:
    multi = upstream.images["multiarch"]
    hosted = f"docker://{mirror.host}/local/multi:1"

    copy(mirror, source(mirror, multi), hosted, "--all")
    copy(mirror, hosted, f"oci:{tmp_path / 'out'}:1", "--all")

    check_oci_copy(tmp_path / "out", multi.digest)


def test_a_retag_promotion_uploads_no_blob(mirror: MirrorServer, upstream: RealUpstream) -> None:
    small = upstream.images["small"]
    dev = f"docker://{mirror.host}/local/app:dev"
    copy(mirror, source(mirror, small), dev)
    uploads_before = len(mirror_requests(mirror.stderr, "/blobs/uploads"))

    copy(mirror, dev, f"docker://{mirror.host}/local/app:prod")

    assert len(mirror_requests(mirror.stderr, "/blobs/uploads")) == uploads_before
    result = skopeo(
        "inspect",
        "--tls-verify=false",
        f"--creds={PUSHER}",
        f"docker://{mirror.host}/local/app:prod",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["Digest"] == small.digest


def test_a_push_to_a_cached_repository_is_refused(
    mirror: MirrorServer, upstream: RealUpstream
) -> None:
    small = upstream.images["small"]
    result = skopeo(
        "copy", *TLS, *LOGIN, source(mirror, small), f"docker://{mirror.host}/library/pushed:1"
    )
    assert result.returncode != 0
    assert "local/*" in result.stderr or "405" in result.stderr or "UNSUPPORTED" in result.stderr
