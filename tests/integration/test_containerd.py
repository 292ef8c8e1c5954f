"""containerd pulls through the mirror, named as a host of docker.io in `hosts.toml`.

A private containerd 1.6 (see `Containerd`) and `ctr images pull --hosts-dir DIR`, where
`DIR/docker.io/hosts.toml` lists the mirror (plain HTTP) before `server`, the real Docker
Hub, which is unreachable from here: an image that pulls came through the mirror. The
layers are unpacked into a real snapshotter (overlayfs here, native otherwise).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.mirrorserver import MirrorServer
from testkit.upstream import RealUpstream, SeededImage
from tests.integration.accesslog import mirror_requests
from tests.integration.conftest import require
from tests.integration.containerd import Containerd
from tests.integration.inventory import image_row
from tests.integration.processes import host_platform


@pytest.fixture
def containerd() -> Iterator[Containerd]:
    """A fresh containerd (empty content store, ~0.3 s to start)."""
    require("containerd", "ctr")
    with Containerd() as daemon:
        yield daemon


def hub_ref(image: SeededImage) -> str:
    return f"docker.io/{image.ref}"


def pull(containerd: Containerd, mirror: MirrorServer, image: SeededImage) -> str:
    """`ctr images pull` of the image's docker.io reference, with the mirror as the host of
    docker.io; must succeed and unpack. Returns what ctr printed."""
    result = containerd.ctr(
        "images",
        "pull",
        "--hosts-dir",
        str(containerd.hosts_dir(mirror.url)),
        "--snapshotter",
        containerd.snapshotter,
        hub_ref(image),
    ).check()
    assert f"unpacking {host_platform()} " in result.stdout, result.describe()
    return result.stdout


def test_pull_through_the_mirror_with_hosts_toml(
    upstream: RealUpstream, mirror: MirrorServer, containerd: Containerd
) -> None:
    image = upstream.images["small"]

    pull(containerd, mirror, image)

    assert image_row(containerd, hub_ref(image))["DIGEST"] == image.digest
    # Unpacked: the snapshotter holds a committed snapshot per layer.
    snapshots = containerd.ctr("snapshots", "--snapshotter", containerd.snapshotter, "ls")
    committed = [line for line in snapshots.check().stdout.splitlines() if "Committed" in line]
    assert committed, snapshots.describe()
    # Every request containerd sent the mirror for this image named the registry it is for.
    requests = mirror_requests(mirror.stderr, f"/v2/{image.repo}/")
    assert requests
    assert all(r.query == "ns=docker.io" for r in requests), requests
    assert upstream.manifest_requests() > 0
    for blob in image.blobs:
        assert upstream.blob_gets(blob) == 1, blob


def test_multi_arch_index_pulls_this_machines_platform(
    upstream: RealUpstream, mirror: MirrorServer, containerd: Containerd
) -> None:
    index = upstream.images["multiarch"]
    platform = host_platform()
    assert platform in index.platforms, f"the seeded index has no {platform} image"

    pull(containerd, mirror, index)

    row = image_row(containerd, hub_ref(index))
    assert row["DIGEST"] == index.digest, row["ROW"]
    assert row["TYPE"] == "application/vnd.oci.image.index.v1+json", row["ROW"]
    requests = mirror_requests(mirror.stderr, f"/v2/{index.repo}/")
    assert all(r.query == "ns=docker.io" for r in requests), requests
    # Only this platform's manifest was fetched, through the mirror.
    for other, child in index.platforms.items():
        fetched = mirror_requests(mirror.stderr, f"/manifests/{child}")
        assert bool(fetched) == (other == platform), (other, fetched)
    assert upstream.blob_gets() > 0
