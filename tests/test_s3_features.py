"""The rest of the mirror on S3 storage, as on a data dir: repository links, eviction under
`max_cache_size` by two replicas sharing the bucket and Redis, and the commands on the cache
(`mirror ls`, `rm`, `gc`, `prefetch`, `tag`) run as the real CLI against a real SeaweedFS.
(Export and import, and gc's aborting of orphaned uploads: tests/test_s3_store.py.)"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from mirror.cache.eviction import RECENT_SECONDS
from testkit.clock import FakeClock
from testkit.fakeupstream import FakeRegistry, Manifest, make_image, random_layer
from testkit.seaweed import SeaweedFS
from testkit.waiting import wait_until
from tests.clients import pull_like_docker
from tests.conftest import StartMirror, answered
from tests.meta_fixtures import unique_prefix
from tests.runcli import run_cli
from tests.s3_fixtures import BUCKET, blob_head, prefix_of, s3_settings

KB = 1024


def image(seed: int) -> Manifest:
    return make_image(layers=[random_layer(64 * KB, seed=seed)], seed=seed)


class Cluster:
    """What the tests of one prefix share: the bucket's prefix, a Redis key prefix, and
    the environment a `mirror` command needs to reach both."""

    def __init__(self, seaweed: SeaweedFS, root: Path, redis_url: str) -> None:
        self.seaweed = seaweed
        self.root = root
        self.settings = s3_settings(root, redis_url, redis_key_prefix=unique_prefix())
        self.env = {
            **seaweed.env(),
            "MIRROR_STORAGE": self.settings["storage"],
            "MIRROR_REDIS_URL": redis_url,
            "MIRROR_REDIS_KEY_PREFIX": self.settings["redis_key_prefix"],
        }

    async def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """`mirror ARGS` on this cluster's bucket, from a data dir of its own."""
        cwd = self.root / "cli"
        cwd.mkdir(exist_ok=True)
        environ = {**self.env, "MIRROR_DATA_DIR": str(cwd / "data"), **env}
        return await asyncio.to_thread(run_cli, *args, env=environ, cwd=cwd)

    def manifest_in_bucket(self, digest: str) -> bool:
        key = f"{prefix_of(self.root)}/manifests/sha256/{digest.removeprefix('sha256:')}"
        try:
            self.seaweed.client().head_object(Bucket=BUCKET, Key=key)
        except Exception:
            return False
        return True

    def in_bucket(self, manifest: Manifest) -> bool:
        blobs = all(blob_head(self.seaweed, self.root, b.digest) for b in manifest.blobs)
        return blobs and self.manifest_in_bucket(manifest.digest)


@pytest.fixture
def cluster(seaweed: SeaweedFS, tmp_path: Path, redis_url: str) -> Cluster:
    return Cluster(seaweed, tmp_path, redis_url)


# --- repository links ------------------------------------------------------------------------


async def test_a_blob_in_the_bucket_is_served_only_to_repositories_that_hold_it(
    start_mirror: StartMirror, upstream: FakeRegistry, cluster: Cluster, tmp_path: Path
) -> None:
    manifest = image(1)
    (layer,) = manifest.layers
    upstream.push_image("team/app", "1", manifest)
    first = await start_mirror(upstream.url, **cluster.settings)
    await pull_like_docker(first, "team/app", "1")

    second = await start_mirror(upstream.url, data_dir=str(tmp_path / "r2"), **cluster.settings)
    upstream.reset_counts()
    held = await second.get(f"/v2/team/app/blobs/{layer.digest}")  # linked: from the bucket
    assert held.status == 200 and await held.read() == layer.data
    assert [(r.method, r.path) for r in upstream.requests] == []
    for mirror in (first, second):
        other = await mirror.get(f"/v2/team/other/blobs/{layer.digest}")
        assert other.status == 404
        assert (await other.json())["errors"][0]["code"] == "BLOB_UNKNOWN"
    assert answered(upstream, kind="blob", method="GET") == 0


# --- eviction --------------------------------------------------------------------------------


async def test_two_replicas_evict_the_shared_bucket_under_its_limit_and_serve_on(
    start_mirror: StartMirror, upstream: FakeRegistry, cluster: Cluster, tmp_path: Path
) -> None:
    """Both replicas find the bucket over `max_cache_size` when they start; their evictors
    take the cluster-wide lock in turn, so one pass evicts down to the low water and the
    other finds nothing left to do. What went is simply fetched again."""
    images = [image(seed) for seed in range(10, 18)]
    for index, manifest in enumerate(images):
        upstream.push_image(f"team/app{index}", "1", manifest)
    one = sum(b.size for b in images[0].blobs) + images[0].size
    clock = FakeClock()
    filler = await start_mirror(
        upstream.url, clock=clock, data_dir=str(tmp_path / "filler"), **cluster.settings
    )
    for index in range(len(images)):
        await pull_like_docker(filler, f"team/app{index}", "1")
        clock.advance(RECENT_SECONDS * 2)  # each image older than the next
    clock.advance(1000)  # all of it is old now
    assert (await filler.get("/api/status")).status == 200  # its access records written

    def bucket_bytes() -> int:
        answer = cluster.seaweed.client().list_objects_v2(
            Bucket=BUCKET, Prefix=prefix_of(cluster.root) + "/"
        )
        return sum(item["Size"] for item in answer.get("Contents", []))

    assert bucket_bytes() > 6 * one
    limits = {"max_cache_size": 4 * one, "cache_low_water": 0.5}
    replicas = [
        await start_mirror(
            upstream.url, clock=clock, data_dir=str(tmp_path / name), **limits, **cluster.settings
        )
        for name in ("r1", "r2")
    ]
    await wait_until(
        lambda: bucket_bytes() <= 2 * one,
        within=30,
        message="the replicas evicted the bucket down to its low water",
        interval=0.2,
    )
    assert [cluster.in_bucket(manifest) for manifest in images[-2:]] == [True, True]
    assert not any(cluster.in_bucket(manifest) for manifest in images[:-2])
    for index in range(len(images)):
        await pull_like_docker(replicas[index % 2], f"team/app{index}", "1")


# --- the commands on the cache ---------------------------------------------------------------


async def test_ls_and_rm_work_on_the_bucket(
    start_mirror: StartMirror, upstream: FakeRegistry, cluster: Cluster, tmp_path: Path
) -> None:
    manifest = image(20)
    upstream.push_image("team/app", "1", manifest)
    mirror = await start_mirror(upstream.url, **cluster.settings)
    await pull_like_docker(mirror, "team/app", "1")

    listing = await cluster.cli("ls", "--json")
    assert listing.returncode == 0, listing.stderr
    (row,) = json.loads(listing.stdout)
    assert row["repository"] == "docker.io/team/app"
    assert (row["tag"], row["digest"], row["complete"]) == ("1", manifest.digest, True)
    assert row["size"] == manifest.size + sum(b.size for b in manifest.blobs)

    removed = await cluster.cli("rm", "team/app:1")
    assert removed.returncode == 0, removed.stderr
    assert f"removed manifest {manifest.digest}" in removed.stdout
    assert not cluster.manifest_in_bucket(manifest.digest)
    assert json.loads((await cluster.cli("ls", "--json")).stdout) == []

    # A replica that never read it asks the upstream for it again, and keeps it again.
    fresh = await start_mirror(upstream.url, data_dir=str(tmp_path / "r2"), **cluster.settings)
    upstream.reset_counts()
    await pull_like_docker(fresh, "team/app", "1")
    assert answered(upstream, kind="manifest", method="GET") >= 1
    assert cluster.manifest_in_bucket(manifest.digest)


async def test_gc_removes_an_unreferenced_blob_from_the_bucket_and_keeps_the_rest(
    start_mirror: StartMirror, upstream: FakeRegistry, cluster: Cluster
) -> None:
    manifest = image(30)
    orphan = random_layer(32 * KB, seed=31)
    upstream.push_image("team/app", "1", manifest)
    upstream.push_blob("team/app", orphan)
    mirror = await start_mirror(upstream.url, **cluster.settings)
    await pull_like_docker(mirror, "team/app", "1")
    resp = await mirror.get(f"/v2/team/app/blobs/{orphan.digest}")
    assert await resp.read() == orphan.data
    assert blob_head(cluster.seaweed, cluster.root, orphan.digest) is not None

    done = await cluster.cli("gc", MIRROR_GC_GRACE="0")
    assert done.returncode == 0, done.stderr
    assert f"removed blob {orphan.digest}" in done.stdout
    assert blob_head(cluster.seaweed, cluster.root, orphan.digest) is None
    assert cluster.in_bucket(manifest)


async def test_prefetch_fills_the_bucket_and_any_replica_serves_it_without_the_upstream(
    start_mirror: StartMirror, upstream: FakeRegistry, cluster: Cluster
) -> None:
    manifest = image(40)
    upstream.push_image("team/app", "1", manifest)
    done = await cluster.cli("prefetch", "team/app:1", MIRROR_UPSTREAM=upstream.url)
    assert done.returncode == 0, done.stderr
    assert "prefetched 1 of 1 images" in done.stdout
    assert cluster.in_bucket(manifest)

    mirror = await start_mirror(upstream.url, **cluster.settings)
    upstream.reset_counts()
    await pull_like_docker(mirror, "team/app", "1")
    assert answered(upstream, kind="blob") == 0
    assert answered(upstream, kind="manifest", method="GET") == 0


async def test_tag_promotes_into_a_hosted_repository_on_the_bucket_and_a_replica_serves_it(
    start_mirror: StartMirror, upstream: FakeRegistry, cluster: Cluster
) -> None:
    manifest = image(41)
    upstream.push_image("team/app", "1", manifest)
    hosted = {"MIRROR_UPSTREAM": upstream.url, "MIRROR_HOSTED": "local/*"}

    pulled = await cluster.cli("tag", "team/app:1", "local/app:approved", **hosted)
    retagged = await cluster.cli("tag", "local/app:approved", "local/app:prod", **hosted)

    assert pulled.returncode == 0, pulled.stderr
    assert "1 manifest, 2 blobs recorded (0 already held), 2 blobs fetched" in pulled.stdout
    assert retagged.returncode == 0, retagged.stderr
    assert "0 blobs fetched (0 B), 0 bytes re-uploaded" in retagged.stdout
    assert cluster.in_bucket(manifest)
    mirror = await start_mirror(upstream.url, hosted=["local/*"], **cluster.settings)
    upstream.reset_counts()
    for tag in ("approved", "prod"):
        got = await mirror.get(f"/v2/local/app/manifests/{tag}")
        assert got.headers["Docker-Content-Digest"] == manifest.digest
    (layer,) = manifest.layers
    blob = await mirror.get(f"/v2/local/app/blobs/{layer.digest}")
    assert blob.status == 200 and await blob.read() == layer.data
    assert upstream.requests == []
