"""Real clients log in to a mirror that requires it: `docker login` and `docker pull` with
the mirror named as the registry (its token flow), skopeo with `--src-creds` (Basic
credentials at the same realm) and containerd's `ctr --user` (the OAuth2 password grant).

The mirror runs with `--htpasswd` and rules: alice may pull anything, bob only
library/app. The upstream stands for docker.io, so `127.0.0.1:<port>/library/alpine:3.19`
is its library/alpine.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from testkit.mirrorserver import MirrorServer, http_request
from testkit.skopeo import skopeo
from testkit.upstream import RealUpstream
from tests.integration.accesslog import mirror_requests
from tests.integration.conftest import StartMirror, require
from tests.integration.containerd import Containerd
from tests.integration.dockerd import DOCKER_CLI, DockerDaemon
from tests.integration.inventory import repo_digests
from tests.integration.processes import host_platform

PASSWORDS = {"alice": "alice-pw-integration", "bob": "bob-pw-integration"}
RULES = [{"users": ["alice"]}, {"users": ["bob"], "repositories": ["library/app"]}]


@pytest.fixture
def secured(start_mirror: StartMirror, tmp_path: Path) -> MirrorServer:
    users = tmp_path / "htpasswd"
    users.write_text(
        "".join(
            f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
            for user, pw in PASSWORDS.items()
        )
    )
    return start_mirror(["--htpasswd", str(users)], env={"MIRROR_AUTH_RULES": json.dumps(RULES)})


@pytest.fixture
def dockerd(secured: MirrorServer) -> Iterator[DockerDaemon]:
    """A fresh dockerd without registry mirrors: images name the mirror itself."""
    require("dockerd", "containerd", "ctr", DOCKER_CLI)
    with DockerDaemon([]) as daemon:
        yield daemon


def login(dockerd: DockerDaemon, mirror: MirrorServer, user: str, password: str) -> str:
    """`docker login` with the password on stdin; what it printed (it may fail)."""
    result = dockerd.docker("login", mirror.host, "-u", user, "--password-stdin", stdin=password)
    return ("ok: " if result.returncode == 0 else "failed: ") + result.output


def test_docker_login_and_pull_through_the_token_flow(
    upstream: RealUpstream, secured: MirrorServer, dockerd: DockerDaemon
) -> None:
    image = upstream.images["small"]
    ref = f"{secured.host}/{image.repo}:{image.tag}"

    anonymous = dockerd.docker("pull", ref)
    assert anonymous.returncode != 0, anonymous.describe()
    assert "unauthorized" in anonymous.stderr.lower(), anonymous.describe()
    wrong = login(dockerd, secured, "alice", "not-the-password")
    assert wrong.startswith("failed: "), wrong
    assert "unauthorized" in wrong.lower(), wrong

    assert "Login Succeeded" in login(dockerd, secured, "alice", PASSWORDS["alice"])
    dockerd.docker("pull", ref).check()

    assert repo_digests(dockerd, ref) == [image.digest]
    for blob in image.blobs:
        assert upstream.blob_gets(blob) == 1, blob
    # Docker fetched tokens at the mirror's realm and pulled with them, as alice.
    tokens = mirror_requests(secured.stderr, "/auth/token")
    assert {r.status for r in tokens} >= {200, 401}  # the wrong password, then the right one
    assert any("scope=repository%3Alibrary%2Falpine%3Apull" in r.query for r in tokens)
    pulled = [
        line
        for line in secured.stderr.splitlines()
        if f"/v2/{image.repo}/manifests/" in line and '" 200 ' in line
    ]
    assert pulled and all(" user=alice " in line for line in pulled), pulled
    for secret in PASSWORDS.values():
        assert secret not in secured.stderr
        assert secret not in dockerd.log()


def test_a_user_without_access_is_denied(
    upstream: RealUpstream, secured: MirrorServer, dockerd: DockerDaemon
) -> None:
    small, app = upstream.images["small"], upstream.images["tag_a"]
    assert "Login Succeeded" in login(dockerd, secured, "bob", PASSWORDS["bob"])

    denied = dockerd.docker("pull", f"{secured.host}/{small.repo}:{small.tag}")
    assert denied.returncode != 0, denied.describe()
    assert "denied" in denied.stderr, denied.describe()
    manifests = mirror_requests(secured.stderr, f"/v2/{small.repo}/manifests/")
    assert manifests and {r.status for r in manifests} == {403}, manifests
    assert upstream.manifest_requests() == 0  # refused before anything was fetched

    allowed = f"{secured.host}/{app.repo}:{app.tag}"
    dockerd.docker("pull", allowed).check()
    assert repo_digests(dockerd, allowed) == [app.digest]


def test_skopeo_with_src_creds(
    upstream: RealUpstream, secured: MirrorServer, tmp_path: Path
) -> None:
    image = upstream.images["small"]
    source = f"docker://{secured.host}/{image.repo}:{image.tag}"
    target = tmp_path / "copy"

    anonymous = skopeo("inspect", "--tls-verify=false", source)
    assert anonymous.returncode != 0
    denied = skopeo("inspect", "--tls-verify=false", "--creds", f"bob:{PASSWORDS['bob']}", source)
    assert denied.returncode != 0
    assert "denied" in denied.stderr, denied.stderr

    copied = skopeo(
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        f"alice:{PASSWORDS['alice']}",
        source,
        f"dir:{target}",
    )
    assert copied.returncode == 0, f"{copied.stderr}\nmirror log:\n{secured.stderr}"
    manifest = json.loads((target / "manifest.json").read_text())
    assert {layer["digest"] for layer in manifest["layers"]} <= set(image.blobs)
    # The health endpoints stayed open all along.
    health = http_request(secured.url + "/healthz")
    assert health is not None and health.status == 200


def test_containerd_with_user_credentials(upstream: RealUpstream, secured: MirrorServer) -> None:
    require("containerd", "ctr")
    image = upstream.images["small"]
    ref = f"{secured.host}/{image.repo}:{image.tag}"
    with Containerd() as containerd:

        def ctr_pull(user: str) -> str:
            result = containerd.ctr(
                "images",
                "pull",
                "--plain-http",
                "--user",
                f"{user}:{PASSWORDS[user]}",
                "--snapshotter",
                containerd.snapshotter,
                ref,
            )
            return ("ok: " if result.returncode == 0 else "failed: ") + result.output

        denied = ctr_pull("bob")
        assert denied.startswith("failed: ") and "403" in denied, denied
        pulled = ctr_pull("alice")
        assert pulled.startswith("ok: ") and f"unpacking {host_platform()} " in pulled, pulled
    tokens = mirror_requests(secured.stderr, "/auth/token")
    assert [r.method for r in tokens if r.status == 200] == ["POST"] * len(tokens), tokens
