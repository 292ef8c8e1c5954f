"""Real clients through two different replicas of one cluster: three `mirror serve` on one
SeaweedFS bucket prefix and one Redis, in front of the real registry. What a client pulled
through one replica, a client of another replica gets without the upstream being asked for
a blob again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.cluster import ReplicaServer, Shared
from testkit.redis import RedisProcess
from testkit.seaweed import SeaweedFS, unique_prefix
from testkit.upstream import RealUpstream, SeededImage
from tests.integration.conftest import require
from tests.integration.containerd import Containerd
from tests.integration.inventory import image_row
from tests.integration.processes import host_platform
from tests.integration.skopeocopy import check_dir_copy, copy

REPLICAS = 3


@pytest.fixture
def replicas(
    upstream: RealUpstream, seaweed: SeaweedFS, tmp_path: Path
) -> Iterator[list[ReplicaServer]]:
    """A cluster of three in front of the real upstream, with a Redis of its own."""
    redis = RedisProcess(tmp_path / "redis")
    started: list[ReplicaServer] = []
    try:
        redis.start()
        storage = f"s3://{seaweed.bucket}/{unique_prefix()}"
        shared = Shared(storage, seaweed.endpoint, redis.redis_url, seaweed.env())
        for index in range(REPLICAS):
            replica = ReplicaServer(upstream.url, tmp_path / f"replica-{index}", shared)
            started.append(replica)
            replica.start()
        yield started
    finally:
        for replica in started:
            if replica.running:
                replica.stop()
        if redis.running:
            redis.stop()


@pytest.mark.skopeo
def test_skopeo_copies_through_one_replica_then_another_which_asks_the_upstream_for_nothing(
    upstream: RealUpstream, replicas: list[ReplicaServer], tmp_path: Path
) -> None:
    image = upstream.images["tag_a"]
    first, *_, last = replicas
    copy(first, image, f"dir:{tmp_path / 'first'}")
    check_dir_copy(tmp_path / "first", image.digest)
    assert [upstream.blob_gets(blob) for blob in image.blobs] == [1] * len(image.blobs)

    upstream.reset_counts()
    copy(last, image, f"dir:{tmp_path / 'last'}")
    check_dir_copy(tmp_path / "last", image.digest)
    assert upstream.blob_gets() == 0
    assert upstream.manifest_requests() == 0, "the tag is fresh for the whole cluster"


def ctr_pull(containerd: Containerd, replica: ReplicaServer, image: SeededImage) -> None:
    """`ctr images pull` of the image's docker.io name with the replica as docker.io's
    host (plain HTTP; the real Docker Hub behind it is unreachable from here), unpacked."""
    ref = f"docker.io/{image.ref}"
    result = containerd.ctr(
        "images",
        "pull",
        "--hosts-dir",
        str(containerd.hosts_dir(replica.url)),
        "--snapshotter",
        containerd.snapshotter,
        ref,
    ).check()
    assert f"unpacking {host_platform()} " in result.stdout, result.describe()
    assert image_row(containerd, ref)["DIGEST"] == image.digest


def test_two_containerds_pull_one_image_through_two_replicas_and_the_upstream_serves_it_once(
    upstream: RealUpstream, replicas: list[ReplicaServer]
) -> None:
    require("containerd", "ctr")
    image = upstream.images["small"]
    first, *_, last = replicas
    with Containerd() as containerd:
        ctr_pull(containerd, first, image)
    assert [upstream.blob_gets(blob) for blob in image.blobs] == [1] * len(image.blobs)

    upstream.reset_counts()
    with Containerd() as containerd:  # an empty content store: it pulls every blob
        ctr_pull(containerd, last, image)
    assert upstream.blob_gets() == 0
