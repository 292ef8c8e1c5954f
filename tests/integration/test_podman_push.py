"""podman pushes into a hosted repository of the mirror and pulls back what it pushed:
`podman login --tls-verify=false`, a pull of library/app:a from the mirror (named as the
registry, plain HTTP), `podman tag` into `local/app`, `podman push` (the layers mounted from
library/app, the config uploaded), then `podman rmi` and a pull of the hosted tag, which
comes back under the digest the push wrote. A user who may only pull is refused the push
(403 DENIED).

Root podman with private storage and configuration (see `Podman`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.mirrorserver import MirrorServer
from testkit.upstream import RealUpstream
from tests.integration.accesslog import mirror_requests
from tests.integration.conftest import StartMirror, require
from tests.integration.hosting import PASSWORDS, registry_call, start_hosting_mirror
from tests.integration.podman import Podman

TLS = "--tls-verify=false"


@pytest.fixture
def hosting(start_mirror: StartMirror, tmp_path: Path) -> MirrorServer:
    return start_hosting_mirror(start_mirror, tmp_path)


@pytest.fixture
def podman(hosting: MirrorServer) -> Iterator[Podman]:
    require("podman")
    with Podman(hosting.host) as client:
        yield client


def login_pull_and_retag(
    podman: Podman, upstream: RealUpstream, mirror: MirrorServer, user: str, target: str
) -> None:
    """Log in as `user`, pull the two-layer library/app:a from the mirror, tag it `target`."""
    podman.podman(
        "login", TLS, "-u", user, "--password-stdin", mirror.host, stdin=PASSWORDS[user]
    ).check()
    app = upstream.images["tag_a"]
    pulled = f"{mirror.host}/{app.repo}:{app.tag}"
    podman.podman("pull", TLS, pulled).check()
    podman.podman("tag", pulled, target).check()


def repo_digests(podman: Podman, ref: str) -> list[str]:
    inspected = podman.podman("image", "inspect", "--format", "{{json .RepoDigests}}", ref)
    return list(json.loads(inspected.check().stdout))


def test_podman_pushes_into_a_hosted_repository_and_pulls_it_back(
    upstream: RealUpstream, hosting: MirrorServer, podman: Podman, tmp_path: Path
) -> None:
    target = f"{hosting.host}/local/app:1"
    login_pull_and_retag(podman, upstream, hosting, "dev", target)
    digest_file = tmp_path / "digest"

    pushed = podman.podman("push", TLS, "--digestfile", str(digest_file), target)

    assert pushed.returncode == 0, f"{pushed.describe()}\nmirror:\n{hosting.stderr}"
    digest = digest_file.read_text().strip()
    manifest = registry_call(hosting, "HEAD", "local/app/manifests/1", "dev")
    assert manifest.status == 200 and manifest.headers["docker-content-digest"] == digest
    uploads = mirror_requests(hosting.stderr, "/v2/local/app/blobs/uploads")
    # The layers podman pulled from library/app are mounted from there; the config is
    # uploaded: POST, one PATCH, PUT.
    mounts = [r for r in uploads if r.method == "POST" and "from=library%2Fapp" in r.query]
    assert len(mounts) == 2 and {r.status for r in mounts} == {201}, uploads
    sent = [(r.method, r.status) for r in uploads if r not in mounts]
    assert sent == [("POST", 202), ("PATCH", 202), ("PUT", 201)], uploads

    podman.podman("rmi", "--all", "--force").check()
    podman.podman("pull", TLS, target).check()

    assert repo_digests(podman, target) == [f"{hosting.host}/local/app@{digest}"]
    for secret in PASSWORDS.values():
        assert secret not in hosting.stderr


def test_a_user_who_may_only_pull_is_refused_the_push(
    upstream: RealUpstream, hosting: MirrorServer, podman: Podman
) -> None:
    target = f"{hosting.host}/local/app:denied"
    login_pull_and_retag(podman, upstream, hosting, "reader", target)

    pushed = podman.podman("push", TLS, target)

    assert pushed.returncode != 0, pushed.describe()
    assert "denied" in pushed.output.lower(), pushed.describe()
    writes = [r for r in mirror_requests(hosting.stderr, "/v2/local/app/") if r.method != "HEAD"]
    assert writes and {r.status for r in writes} == {403}, writes
    assert registry_call(hosting, "GET", "local/app/manifests/denied", "reader").status == 404
