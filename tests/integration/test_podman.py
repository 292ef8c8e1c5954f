"""podman pulls through the mirror, named as a `[[registry.mirror]]` of docker.io.

Root podman 4.3 with private storage and configuration (see `Podman`). Its registries.conf
knows only docker.io, with the mirror as its mirror (`insecure = true`: plain HTTP); it
has no way to reach the upstream behind the mirror, and Docker Hub is unreachable from
here, so an image that pulls came through the mirror.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from testkit.mirrorserver import MirrorServer
from testkit.upstream import RealUpstream, SeededImage
from tests.integration.accesslog import mirror_requests
from tests.integration.conftest import require
from tests.integration.podman import Podman
from tests.integration.processes import host_platform


@pytest.fixture
def podman(mirror: MirrorServer) -> Iterator[Podman]:
    """podman with empty storage, whose registries.conf mirrors docker.io at `mirror`."""
    require("podman")
    with Podman(mirror.host) as client:
        yield client


def hub_ref(image: SeededImage) -> str:
    return f"docker.io/{image.ref}"


def test_pull_through_the_mirror_with_registries_conf(
    upstream: RealUpstream, mirror: MirrorServer, podman: Podman
) -> None:
    image = upstream.images["small"]
    ref = hub_ref(image)

    pulled = podman.podman("pull", ref).check()

    assert f"Trying to pull {ref}..." in pulled.stderr
    inspected = podman.podman("image", "inspect", "--format", "{{json .RepoDigests}}", ref)
    assert json.loads(inspected.check().stdout) == [f"docker.io/{image.repo}@{image.digest}"]
    listed = podman.podman(
        "images", "--digests", "--format", "{{.Repository}}:{{.Tag}} {{.Digest}}"
    )
    assert f"{ref} {image.digest}" in listed.check().stdout.splitlines()
    # The pull went to the mirror (and the mirror to the upstream).
    assert mirror_requests(mirror.stderr, f"/v2/{image.repo}/manifests/{image.tag}")
    assert upstream.manifest_requests() > 0
    for blob in image.blobs:
        assert upstream.blob_gets(blob) == 1, blob


def test_multi_arch_index_pulls_this_machines_platform(
    upstream: RealUpstream, mirror: MirrorServer, podman: Podman
) -> None:
    index = upstream.images["multiarch"]
    platform = host_platform()
    assert platform in index.platforms, f"the seeded index has no {platform} image"
    ref = hub_ref(index)

    podman.podman("pull", ref).check()

    inspected = podman.podman("image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", ref)
    assert inspected.check().stdout.strip() == platform
    digests = podman.podman("image", "inspect", "--format", "{{json .RepoDigests}}", ref)
    # podman records both the index's digest and this platform's manifest's.
    assert set(json.loads(digests.check().stdout)) == {
        f"docker.io/{index.repo}@{index.digest}",
        f"docker.io/{index.repo}@{index.platforms[platform]}",
    }
    for other, child in index.platforms.items():
        fetched = mirror_requests(mirror.stderr, f"/manifests/{child}")
        assert bool(fetched) == (other == platform), (other, fetched)
    assert upstream.blob_gets() > 0
