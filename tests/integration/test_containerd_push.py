"""containerd's `ctr images push` into a hosted repository of the mirror: it pushes each blob
it does not find (HEAD 404) with one monolithic `PUT` into its upload session, or mounts it
from the repository it was pulled from, and trusts a blob or manifest only when the answer
carries its `Docker-Content-Digest`. The pushed OCI manifest is byte for byte the pulled
one, so the hosted tag has the upstream's digest, and a fresh pull of it unpacks.

An image imported from a tarball has no such source, so every blob goes up in its
session's single PUT. ctr logs in with `--user` (the OAuth2 password grant at the mirror's
token endpoint). A user who may only pull is refused the push (403 DENIED).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.mirrorserver import MirrorServer
from testkit.upstream import RealUpstream
from tests.integration.accesslog import mirror_requests
from tests.integration.conftest import StartMirror, require
from tests.integration.containerd import Containerd
from tests.integration.hosting import PASSWORDS, registry_call, start_hosting_mirror
from tests.integration.inventory import image_row
from tests.integration.processes import Result


@pytest.fixture
def hosting(start_mirror: StartMirror, tmp_path: Path) -> MirrorServer:
    return start_hosting_mirror(start_mirror, tmp_path)


def ctr_as(containerd: Containerd, user: str, *args: str) -> Result:
    """`ctr images ARGS --plain-http --user` as one of the users."""
    command, *rest = args
    credentials = f"{user}:{PASSWORDS[user]}"
    return containerd.ctr("images", command, "--plain-http", "--user", credentials, *rest)


def test_ctr_pushes_into_a_hosted_repository_and_pulls_it_back(
    upstream: RealUpstream, hosting: MirrorServer
) -> None:
    require("containerd", "ctr")
    app = upstream.images["tag_a"]
    pulled = f"{hosting.host}/{app.repo}:{app.tag}"
    target = f"{hosting.host}/local/ctr:1"
    with Containerd() as containerd:
        ctr_as(containerd, "dev", "pull", pulled).check()
        containerd.ctr("images", "tag", pulled, target).check()

        pushed = ctr_as(containerd, "dev", "push", target)

        assert pushed.returncode == 0, f"{pushed.describe()}\nmirror:\n{hosting.stderr}"
    head = registry_call(hosting, "HEAD", "local/ctr/manifests/1", "dev")
    assert head.status == 200 and head.headers["docker-content-digest"] == app.digest
    # Every blob is mounted from library/app, the one source containerd knows for it.
    uploads = mirror_requests(hosting.stderr, "/v2/local/ctr/blobs/uploads")
    mounted = [r for r in uploads if "from=library/app" in r.query and r.status == 201]
    assert len(mounted) == len(app.blobs) == len(uploads), uploads

    with Containerd() as fresh:
        ctr_as(fresh, "dev", "pull", "--snapshotter", fresh.snapshotter, target).check()
        assert image_row(fresh, target)["DIGEST"] == app.digest


def test_an_imported_image_is_pushed_in_one_put_per_blob(
    upstream: RealUpstream, hosting: MirrorServer, tmp_path: Path
) -> None:
    require("containerd", "ctr")
    app = upstream.images["tag_b"]
    pulled = f"{hosting.host}/{app.repo}:{app.tag}"
    target = f"{hosting.host}/local/imported:1"
    archive = tmp_path / "app.tar"
    with Containerd() as containerd:
        ctr_as(containerd, "dev", "pull", pulled).check()
        containerd.ctr("images", "export", str(archive), pulled).check()
    with Containerd() as containerd:  # knows no registry the blobs came from: no mounts
        containerd.ctr("images", "import", "--no-unpack", str(archive)).check()
        containerd.ctr("images", "tag", pulled, target).check()

        pushed = ctr_as(containerd, "dev", "push", target)

        assert pushed.returncode == 0, f"{pushed.describe()}\nmirror:\n{hosting.stderr}"
    uploads = mirror_requests(hosting.stderr, "/v2/local/imported/blobs/uploads")
    sessions = [r for r in uploads if r.method == "POST"]
    assert len(sessions) == len(app.blobs) and {r.status for r in sessions} == {202}, uploads
    closed = [r for r in uploads if r.method == "PUT"]
    assert len(closed) == len(app.blobs) and {r.status for r in closed} == {201}, uploads
    assert not [r for r in uploads if r.method == "PATCH"], uploads
    head = registry_call(hosting, "HEAD", "local/imported/manifests/1", "dev")
    assert head.status == 200 and head.headers["docker-content-digest"] == app.digest


def test_a_user_who_may_only_pull_is_refused_the_push(
    upstream: RealUpstream, hosting: MirrorServer
) -> None:
    require("containerd", "ctr")
    app = upstream.images["tag_a"]
    pulled = f"{hosting.host}/{app.repo}:{app.tag}"
    target = f"{hosting.host}/local/ctr:denied"
    with Containerd() as containerd:
        ctr_as(containerd, "reader", "pull", pulled).check()
        containerd.ctr("images", "tag", pulled, target).check()

        pushed = ctr_as(containerd, "reader", "push", target)

    assert pushed.returncode != 0, pushed.describe()
    assert "403" in pushed.output, pushed.describe()
    writes = [r for r in mirror_requests(hosting.stderr, "/v2/local/ctr/") if r.method != "HEAD"]
    assert writes and {r.status for r in writes} == {403}, writes
    assert registry_call(hosting, "GET", "local/ctr/manifests/denied", "reader").status == 404
