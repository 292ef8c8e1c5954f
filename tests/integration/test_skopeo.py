"""skopeo pulls through the mirror from a real registry: what it gets is exactly what the
upstream holds, blobs are downloaded from the upstream once however many clients ask, and
cached images survive an upstream outage."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from testkit.mirrorserver import MirrorServer, http_request
from testkit.skopeo import skopeo
from testkit.upstream import MANIFEST_ACCEPT, RealUpstream
from tests.integration.skopeocopy import (
    blob_digests,
    check_dir_copy,
    check_oci_copy,
    copy,
    hex_of,
    source,
)

pytestmark = pytest.mark.skopeo

OUTAGE_FAILS_WITHIN = 30.0


# --- what a client gets is what the upstream holds ------------------------------------------


def test_inspect_through_the_mirror_reports_the_upstream_digest_and_layers(
    mirror: MirrorServer, upstream: RealUpstream
) -> None:
    small = upstream.images["small"]
    result = skopeo("inspect", "--tls-verify=false", source(mirror, small))
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["Digest"] == small.digest
    assert info["Layers"] == small.blobs[1:]


def test_a_short_name_is_docker_hubs_library_image(
    mirror: MirrorServer, upstream: RealUpstream
) -> None:
    small = upstream.images["small"]
    result = skopeo("inspect", "--tls-verify=false", source(mirror, small, repo="alpine"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["Digest"] == small.digest


def test_inspect_raw_of_a_multiarch_tag_is_the_upstream_index_byte_for_byte(
    mirror: MirrorServer, upstream: RealUpstream
) -> None:
    multi = upstream.images["multiarch"]
    result = skopeo("inspect", "--raw", "--tls-verify=false", source(mirror, multi))
    assert result.returncode == 0, result.stderr
    raw = result.stdout.encode()
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == multi.digest
    index = json.loads(raw)
    assert {
        f"{m['platform']['os']}/{m['platform']['architecture']}": m["digest"]
        for m in index["manifests"]
    } == multi.platforms


def test_copy_to_a_dir_gets_every_blob_intact(
    mirror: MirrorServer, upstream: RealUpstream, tmp_path: Path
) -> None:
    small = upstream.images["small"]
    copy(mirror, small, f"dir:{tmp_path / 'copy'}")
    manifest = check_dir_copy(tmp_path / "copy", small.digest)
    assert blob_digests(manifest) == small.blobs
    assert sum(d["size"] for d in [manifest["config"], *manifest["layers"]]) == small.size


def test_copy_to_an_oci_layout_gets_every_blob_intact(
    mirror: MirrorServer, upstream: RealUpstream, tmp_path: Path
) -> None:
    small = upstream.images["small"]
    copy(mirror, small, f"oci:{tmp_path / 'layout'}:{small.tag}")
    assert check_oci_copy(tmp_path / "layout", small.digest) == set(small.blobs)


def test_copy_all_of_a_multiarch_index_gets_every_platform(
    mirror: MirrorServer, upstream: RealUpstream, tmp_path: Path
) -> None:
    multi = upstream.images["multiarch"]
    copy(mirror, multi, f"oci:{tmp_path / 'layout'}:{multi.tag}", "--all")
    assert check_oci_copy(tmp_path / "layout", multi.digest) == set(multi.blobs)
    children = {p.name for p in (tmp_path / "layout" / "blobs" / "sha256").iterdir()}
    assert {hex_of(d) for d in multi.platforms.values()} <= children


def test_override_arch_gets_that_platforms_manifest_from_the_index(
    mirror: MirrorServer, upstream: RealUpstream, tmp_path: Path
) -> None:
    multi = upstream.images["multiarch"]
    copy(mirror, multi, f"dir:{tmp_path / 'arm64'}", global_options=("--override-arch", "arm64"))
    manifest = check_dir_copy(tmp_path / "arm64", multi.platforms["linux/arm64"])
    assert set(blob_digests(manifest)) < set(multi.blobs)
    config = json.loads((tmp_path / "arm64" / hex_of(manifest["config"]["digest"])).read_bytes())
    assert (config["os"], config["architecture"]) == ("linux", "arm64")


# --- the upstream is asked once -------------------------------------------------------------


def test_a_warm_copy_asks_the_upstream_for_nothing(
    mirror: MirrorServer, upstream: RealUpstream, tmp_path: Path
) -> None:
    small = upstream.images["small"]
    copy(mirror, small, f"dir:{tmp_path / 'cold'}")
    assert upstream.blob_gets() == len(small.blobs)
    for digest in small.blobs:
        assert upstream.blob_gets(digest) == 1, digest

    upstream.reset_counts()
    copy(mirror, small, f"dir:{tmp_path / 'warm'}")
    check_dir_copy(tmp_path / "warm", small.digest)
    assert upstream.blob_gets() == 0
    assert upstream.manifest_requests() == 0, "a fresh tag is answered from the cache"


def test_a_layer_shared_by_two_images_is_downloaded_once(
    mirror: MirrorServer, upstream: RealUpstream, tmp_path: Path
) -> None:
    tag_a, tag_b = upstream.images["tag_a"], upstream.images["tag_b"]
    shared = set(tag_a.blobs) & set(tag_b.blobs)
    assert shared, "the two app images share their base layer"
    copy(mirror, tag_a, f"dir:{tmp_path / 'a'}")

    upstream.reset_counts()
    copy(mirror, tag_b, f"dir:{tmp_path / 'b'}")
    check_dir_copy(tmp_path / "b", tag_b.digest)
    for digest in shared:
        assert upstream.blob_gets(digest) == 0
    assert upstream.blob_gets() == len(set(tag_b.blobs) - shared)


@pytest.mark.slow
def test_ten_concurrent_cold_copies_of_a_large_image_download_each_blob_once(
    mirror: MirrorServer, upstream: RealUpstream, tmp_path: Path
) -> None:
    large = upstream.images["large"]
    targets = [tmp_path / f"copy-{i}" for i in range(10)]

    def copy_and_check(target: Path) -> None:
        copy(mirror, large, f"dir:{target}")
        check_dir_copy(target, large.digest)

    try:
        with ThreadPoolExecutor(max_workers=len(targets)) as pool:
            for future in [pool.submit(copy_and_check, target) for target in targets]:
                future.result(timeout=180)
        layer = large.blobs[-1]
        assert upstream.blob_gets(layer) == 1, "ten clients, one upstream download"
        assert upstream.blob_gets() == len(large.blobs)
    finally:
        for target in targets:
            shutil.rmtree(target, ignore_errors=True)


# --- upstream outage -------------------------------------------------------------------------


def test_with_the_upstream_down_cached_images_pull_and_others_fail_fast_naming_it(
    mirror: MirrorServer, upstream: RealUpstream, tmp_path: Path
) -> None:
    small, uncached = upstream.images["small"], upstream.images["tag_b"]
    copy(mirror, small, f"dir:{tmp_path / 'before'}")

    upstream.stop()
    copy(mirror, small, f"dir:{tmp_path / 'during'}")
    check_dir_copy(tmp_path / "during", small.digest)

    started = time.monotonic()
    failed = skopeo(
        "copy",
        "--src-tls-verify=false",
        source(mirror, uncached),
        f"dir:{tmp_path / 'uncached'}",
        timeout=2 * OUTAGE_FAILS_WITHIN,
    )
    elapsed = time.monotonic() - started
    assert failed.returncode != 0, "an image the mirror never saw cannot be served"
    assert elapsed < OUTAGE_FAILS_WITHIN, f"failing took {elapsed:.1f} s"
    # skopeo drops the body of a 5xx answer but prints its status line, where the mirror
    # puts the cause too.
    assert "503 Service Unavailable" in failed.stderr, failed.stderr
    assert f"upstream {upstream.host} is unreachable" in failed.stderr, failed.stderr

    # The JSON body says the same, for clients that read it.
    answer = http_request(
        f"{mirror.url}/v2/{uncached.repo}/manifests/{uncached.tag}",
        headers={"Accept": MANIFEST_ACCEPT},
        timeout=OUTAGE_FAILS_WITHIN,
    )
    assert answer is not None and answer.status == 503, answer
    [error] = json.loads(answer.body)["errors"]
    assert error["code"] == "UNAVAILABLE"
    assert upstream.host in error["message"], error
