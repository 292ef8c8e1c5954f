"""Docker Engine pulls through the mirror, configured as its `registry-mirrors` entry.

The engine is Debian's dockerd 20.10 with the classic image store (see `DockerDaemon`).
Docker uses `registry-mirrors` only for Docker Hub images, and Docker Hub is unreachable
from here, so an image that pulls at all came through the mirror; each test also checks
that the upstream behind the mirror saw the pull and that dockerd's own log names the
mirror as the endpoint it pulled from.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from testkit.mirrorserver import MirrorServer, http_request
from testkit.upstream import RealUpstream, SeededImage
from tests.integration.accesslog import mirror_requests
from tests.integration.conftest import StartMirror, require
from tests.integration.dockerd import DOCKER_CLI, DockerDaemon
from tests.integration.inventory import repo_digests
from tests.integration.processes import host_platform

OUTAGE_FAILURE_BUDGET = 30.0  # seconds an uncached pull may take to fail during an outage


@pytest.fixture
def dockerd(mirror: MirrorServer) -> Iterator[DockerDaemon]:
    """A fresh dockerd (empty image store, ~0.5 s to start) whose only mirror is `mirror`."""
    require("dockerd", "containerd", "ctr", DOCKER_CLI)
    with DockerDaemon([mirror.url]) as daemon:
        yield daemon


def docker_name(image: SeededImage) -> str:
    """How a Docker user names a Hub image: `library/alpine` is just `alpine`."""
    return image.repo.removeprefix("library/")


def pull(dockerd: DockerDaemon, image: SeededImage) -> str:
    """`docker pull name:tag`, which must succeed; the reference pulled."""
    ref = f"{docker_name(image)}:{image.tag}"
    dockerd.docker("pull", ref).check()
    return ref


def assert_pulled_from_mirror(dockerd: DockerDaemon, mirror: MirrorServer, name: str) -> None:
    """dockerd's debug log names the mirror as the endpoint it pulled `name` from, and the
    mirror logged the manifest request."""
    assert f"Trying to pull {name} from {mirror.url}/ v2" in dockerd.log()
    assert mirror_requests(mirror.stderr, f"/v2/library/{name}/manifests/")


def test_pull_by_tag_through_the_mirror(
    upstream: RealUpstream, mirror: MirrorServer, dockerd: DockerDaemon
) -> None:
    image = upstream.images["small"]

    ref = pull(dockerd, image)

    assert repo_digests(dockerd, ref) == [image.digest]
    assert_pulled_from_mirror(dockerd, mirror, docker_name(image))
    assert upstream.manifest_requests() > 0
    for blob in image.blobs:  # config and layers, each fetched from the upstream once
        assert upstream.blob_gets(blob) == 1, blob


def test_two_tags_fetch_their_shared_base_layer_from_the_upstream_once(
    upstream: RealUpstream, mirror: MirrorServer, dockerd: DockerDaemon
) -> None:
    tag_a, tag_b = upstream.images["tag_a"], upstream.images["tag_b"]
    shared = set(tag_a.blobs) & set(tag_b.blobs)
    assert shared, "app:a and app:b should share their base layer"

    ref_a = pull(dockerd, tag_a)
    assert repo_digests(dockerd, ref_a) == [tag_a.digest]
    # Without app:a Docker has no copy of the base layer left, so pulling app:b must fetch
    # it again: from the mirror's cache, not from the upstream.
    dockerd.docker("rmi", ref_a).check()
    ref_b = pull(dockerd, tag_b)

    assert repo_digests(dockerd, ref_b) == [tag_b.digest]
    for layer in shared:
        assert upstream.blob_gets(layer) == 1, layer
        fetched = mirror_requests(mirror.stderr, f"/blobs/{layer}")
        assert [(r.method, r.status) for r in fetched] == [("GET", 200)] * 2
    for blob in set(tag_a.blobs) ^ set(tag_b.blobs):
        assert upstream.blob_gets(blob) == 1, blob


def test_multi_arch_image_pulls_this_machines_platform(
    upstream: RealUpstream, mirror: MirrorServer, dockerd: DockerDaemon
) -> None:
    index = upstream.images["multiarch"]
    platform = host_platform()
    assert platform in index.platforms, f"the seeded index has no {platform} image"

    ref = pull(dockerd, index)

    assert repo_digests(dockerd, ref) == [index.digest]  # the index's, not the platform's
    inspected = dockerd.docker("image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", ref)
    assert inspected.check().stdout.strip() == platform
    assert_pulled_from_mirror(dockerd, mirror, docker_name(index))
    child = index.platforms[platform]
    assert mirror_requests(mirror.stderr, f"/manifests/{child}")
    assert upstream.blob_gets() > 0


def test_upstream_outage_cached_tag_still_pulls_uncached_fails_fast(
    upstream: RealUpstream, start_mirror: StartMirror
) -> None:
    # --tag-ttl 0: the tag needs revalidation on every request, so during the outage it is
    # served stale (after a failed revalidation), not merely fresh from the cache.
    require("dockerd", "containerd", "ctr", DOCKER_CLI)
    mirror = start_mirror(["--tag-ttl", "0"])
    cached, uncached = upstream.images["small"], upstream.images["tag_a"]
    with DockerDaemon([mirror.url]) as dockerd:
        ref = pull(dockerd, cached)
        dockerd.docker("rmi", ref).check()

        upstream.stop()  # restarted after the test by the conftest

        again = dockerd.docker("pull", ref).check()
        assert repo_digests(dockerd, ref) == [cached.digest]
        assert "Downloaded newer image" in again.stdout
        # The mirror tried the upstream, failed, and said so, naming it.
        stale = f"serving docker.io/{cached.ref} stale: upstream {upstream.host} is unreachable"
        assert stale in mirror.stderr

        started = time.monotonic()
        failed = dockerd.docker("pull", f"{docker_name(uncached)}:{uncached.tag}", timeout=120)
        seconds = time.monotonic() - started

        assert failed.returncode != 0, failed.describe()
        assert seconds < OUTAGE_FAILURE_BUDGET, failed.describe()
        # The mirror answered 503, so Docker moved on to Docker Hub, its last endpoint, and
        # reports Hub's failure (unreachable here), not the mirror's:
        #   Error response from daemon: Get "https://registry-1.docker.io/v2/": dial tcp:
        #   lookup registry-1.docker.io on ...: no such host
        assert failed.stderr.startswith("Error response from daemon:"), failed.describe()
        assert "registry-1.docker.io" in failed.stderr, failed.describe()
        log = dockerd.log()
        assert f"Trying to pull {docker_name(uncached)} from {mirror.url}/ v2" in log
        assert (
            "Attempting next endpoint for pull after error: "
            "received unexpected HTTP status: 503 Service Unavailable"
        ) in log

    manifest_path = f"/v2/{uncached.repo}/manifests/{uncached.tag}"
    assert {r.status for r in mirror_requests(mirror.stderr, manifest_path)} == {503}
    # What Docker does not show: the mirror's answer names the unreachable upstream.
    answer = http_request(mirror.url + manifest_path)
    assert answer is not None and answer.status == 503
    message = json.loads(answer.body)["errors"][0]["message"]
    assert f"upstream {upstream.host} is unreachable" in message


def test_other_registries_pull_through_the_mirror_by_path_prefix(
    upstream: RealUpstream, start_mirror: StartMirror
) -> None:
    """Docker cannot set a mirror for a registry other than Docker Hub, but it can name the
    mirror itself with the registry as a path prefix: `mirror:5000/<registry>/<name>`."""
    require("dockerd", "containerd", "ctr", DOCKER_CLI)
    private = [{"host": "registry.example.com", "url": upstream.url}]
    mirror = start_mirror(env={"MIRROR_UPSTREAM": json.dumps(private)})
    image = upstream.images["small"]
    ref = f"{mirror.host}/registry.example.com/{image.repo}:{image.tag}"
    with DockerDaemon([]) as dockerd:  # no registry-mirrors: the mirror is named directly
        dockerd.docker("pull", ref).check()
        assert repo_digests(dockerd, ref) == [image.digest]
    requests = mirror_requests(mirror.stderr, f"/v2/registry.example.com/{image.repo}/")
    assert requests
    assert all(r.query == "" for r in requests), requests  # Docker sends no ns
    for blob in image.blobs:
        assert upstream.blob_gets(blob) == 1, blob
