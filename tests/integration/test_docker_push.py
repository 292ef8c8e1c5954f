"""A private Docker Engine pushes into a hosted repository of the mirror and pulls back what
it pushed: `docker login`, a pull of a two-layer image through the mirror, `docker tag` into
`local/app`, `docker push` (its layers mounted from the repository they were pulled from,
its config uploaded the way Docker uploads: POST, one PATCH without Content-Range, PUT),
then `docker rmi` and a pull of the hosted tag with the digest the push reported. An image
built on the pulled one (`docker build`, a `COPY` of 3 MB: no container runs) pushes its new
layer the same way and mounts its base layers.

A user who may only pull is refused the push (403 DENIED), and one who may push is refused
a delete of the manifest. dockerd names the mirror itself (no registry mirrors): plain HTTP
to 127.0.0.1 needs no `insecure-registries` entry, 127.0.0.0/8 is insecure by default.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from testkit.layout import random_bytes
from testkit.mirrorserver import MirrorServer
from testkit.upstream import RealUpstream
from tests.integration.accesslog import mirror_requests
from tests.integration.conftest import MB, StartMirror, require
from tests.integration.dockerd import DOCKER_CLI, DockerDaemon
from tests.integration.hosting import (
    PASSWORDS,
    error_codes,
    registry_call,
    start_hosting_mirror,
)
from tests.integration.inventory import repo_digests

# `docker push`'s last line: "1: digest: sha256:<hex> size: 1234"
_PUSHED = re.compile(r"digest: (sha256:[0-9a-f]{64}) size: \d+")


@pytest.fixture
def hosting(start_mirror: StartMirror, tmp_path: Path) -> MirrorServer:
    return start_hosting_mirror(start_mirror, tmp_path)


@pytest.fixture
def dockerd(hosting: MirrorServer) -> Iterator[DockerDaemon]:
    """A fresh dockerd without registry mirrors: images name the mirror itself."""
    require("dockerd", "containerd", "ctr", DOCKER_CLI)
    with DockerDaemon([]) as daemon:
        yield daemon


def login(dockerd: DockerDaemon, mirror: MirrorServer, user: str) -> None:
    dockerd.docker(
        "login", mirror.host, "-u", user, "--password-stdin", stdin=PASSWORDS[user]
    ).check()


def pull_and_retag(
    dockerd: DockerDaemon, upstream: RealUpstream, mirror: MirrorServer, target: str
) -> None:
    """Pull the two-layer library/app:a through the mirror and tag it as `target`."""
    app = upstream.images["tag_a"]
    pulled = f"{mirror.host}/{app.repo}:{app.tag}"
    dockerd.docker("pull", pulled).check()
    dockerd.docker("tag", pulled, target).check()


def layers(dockerd: DockerDaemon, ref: str) -> str:
    inspected = dockerd.docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", ref)
    return inspected.check().stdout


def test_docker_pushes_into_a_hosted_repository_and_pulls_it_back(
    upstream: RealUpstream, hosting: MirrorServer, dockerd: DockerDaemon
) -> None:
    target = f"{hosting.host}/local/app:1"
    login(dockerd, hosting, "dev")
    pull_and_retag(dockerd, upstream, hosting, target)
    image_id = dockerd.docker("image", "inspect", "--format", "{{.Id}}", target).check().stdout
    diff_ids = layers(dockerd, target)

    pushed = dockerd.docker("push", target)

    assert pushed.returncode == 0, f"{pushed.describe()}\nmirror:\n{hosting.stderr}"
    match = _PUSHED.search(pushed.stdout)
    assert match is not None, pushed.describe()
    digest = match[1]
    uploads = mirror_requests(hosting.stderr, "/v2/local/app/blobs/uploads")
    # Layers Docker pulled from library/app are mounted from there, not uploaded again...
    mounts = [r for r in uploads if r.method == "POST" and "from=library%2Fapp" in r.query]
    assert len(mounts) == 2 and {r.status for r in mounts} == {201}, uploads
    # ...and the config (new to the mirror's local/app) goes POST, one PATCH, PUT.
    sent = [(r.method, r.status) for r in uploads if r not in mounts]
    assert sent == [("POST", 202), ("PATCH", 202), ("PUT", 201)], uploads
    manifest_puts = mirror_requests(hosting.stderr, "/v2/local/app/manifests/1")
    assert [(r.method, r.status) for r in manifest_puts if r.method == "PUT"] == [("PUT", 201)]

    app = upstream.images["tag_a"]
    dockerd.docker("rmi", target, f"{hosting.host}/{app.repo}:{app.tag}").check()
    dockerd.docker("pull", target).check()

    assert repo_digests(dockerd, target) == [digest]
    assert dockerd.docker("image", "inspect", "--format", "{{.Id}}", target).stdout == image_id
    assert layers(dockerd, target) == diff_ids
    for secret in PASSWORDS.values():
        assert secret not in hosting.stderr
        assert secret not in dockerd.log()


def test_a_user_who_may_only_pull_is_refused_the_push(
    upstream: RealUpstream, hosting: MirrorServer, dockerd: DockerDaemon
) -> None:
    target = f"{hosting.host}/local/app:denied"
    login(dockerd, hosting, "reader")
    pull_and_retag(dockerd, upstream, hosting, target)

    pushed = dockerd.docker("push", target)

    assert pushed.returncode != 0, pushed.describe()
    assert "denied" in pushed.output, pushed.describe()
    writes = [r for r in mirror_requests(hosting.stderr, "/v2/local/app/") if r.method != "HEAD"]
    assert writes and {r.status for r in writes} == {403}, writes
    assert registry_call(hosting, "GET", "local/app/manifests/denied", "reader").status == 404


def test_a_user_who_may_push_is_refused_a_delete(
    upstream: RealUpstream, hosting: MirrorServer, dockerd: DockerDaemon
) -> None:
    target = f"{hosting.host}/local/app:kept"
    login(dockerd, hosting, "dev")
    pull_and_retag(dockerd, upstream, hosting, target)
    pushed = dockerd.docker("push", target).check()
    match = _PUSHED.search(pushed.stdout)
    assert match is not None, pushed.describe()

    refused = registry_call(hosting, "DELETE", f"local/app/manifests/{match[1]}", "dev")

    assert refused.status == 403, refused
    assert error_codes(refused) == ["DENIED"], refused.body
    assert b"dev" in refused.body and b"local/app" in refused.body
    kept = registry_call(hosting, "HEAD", "local/app/manifests/kept", "dev")
    assert kept.status == 200 and kept.headers["docker-content-digest"] == match[1]


def test_a_new_layer_is_uploaded_in_one_patch_and_the_base_mounted(
    upstream: RealUpstream, hosting: MirrorServer, dockerd: DockerDaemon, tmp_path: Path
) -> None:
    app = upstream.images["tag_a"]
    base = f"{hosting.host}/{app.repo}:{app.tag}"
    target = f"{hosting.host}/local/built:1"
    login(dockerd, hosting, "dev")
    dockerd.docker("pull", base).check()
    context = tmp_path / "context"
    context.mkdir()
    (context / "data.bin").write_bytes(random_bytes(3 * MB, seed=160))
    (context / "Dockerfile").write_text(f"FROM {base}\nCOPY data.bin /data.bin\n")
    dockerd.docker("build", "-t", target, str(context)).check()

    pushed = dockerd.docker("push", target)

    assert pushed.returncode == 0, f"{pushed.describe()}\nmirror:\n{hosting.stderr}"
    manifest = json.loads(registry_call(hosting, "GET", "local/built/manifests/1", "dev").body)
    *base_layers, new_layer = [layer["digest"] for layer in manifest["layers"]]
    uploads = mirror_requests(hosting.stderr, "/v2/local/built/blobs/uploads")
    mounts = [parse_qs(r.query) for r in uploads if r.method == "POST" and r.status == 201]
    assert sorted(m["mount"][0] for m in mounts) == sorted(base_layers), uploads
    assert all(m["from"] == [app.repo] for m in mounts), uploads
    closed = [r for r in uploads if r.method == "PUT"]
    assert {parse_qs(r.query)["digest"][0] for r in closed} == {
        new_layer,
        manifest["config"]["digest"],
    }
    for put in closed:  # each session after its POST: one PATCH, then the PUT
        session = [r for r in uploads if r.path == put.path]
        assert [(r.method, r.status) for r in session] == [("PATCH", 202), ("PUT", 201)], uploads
    diff_ids = layers(dockerd, target)

    dockerd.docker("rmi", target, base).check()
    dockerd.docker("pull", target).check()

    assert layers(dockerd, target) == diff_ids
