"""Prefetch and pinning: `mirror prefetch`, the server's prefetch schedule, and what the
configured `prefetch` list pins against eviction."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from mirror import cli, config
from mirror.cache.pinning import pinned_digests
from mirror.meta import open_meta_store
from mirror.reference import Digest
from mirror.storage.filesystem import FilesystemStore
from testkit.fakeupstream import FakeRegistry, Manifest, make_image
from testkit.mirrorproc import free_port, run_mirror
from testkit.waiting import wait_until
from tests.clients import pull_like_docker
from tests.conftest import StartMirror, answered, toml_value

POLL_TIMEOUT = 5.0


def write_config(path: Path, upstream_url: str, data_dir: Path, **settings: Any) -> Path:
    values = {
        "upstream": upstream_url,
        "data_dir": str(data_dir),
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
        **settings,
    }
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in values.items()))
    return path


@pytest.fixture
def config_file(tmp_path: Path, upstream: FakeRegistry, data_dir: Path) -> Path:
    return write_config(tmp_path / "prefetch.toml", upstream.url, data_dir)


async def prefetch(config_file: Path, *args: str) -> int:
    """`mirror prefetch ARGS` in this process (its own event loop, in a thread, so the fake
    upstream in the test's loop keeps answering)."""
    return await asyncio.to_thread(cli.main, ["prefetch", "--config", str(config_file), *args])


async def in_store(data_dir: Path, *manifests: Manifest) -> dict[str, bool]:
    """For each manifest and each of its own blobs (not its children's): whether cached."""
    store = FilesystemStore(data_dir)
    found = {}
    for manifest in manifests:
        found[manifest.digest] = await store.has_manifest(Digest.parse(manifest.digest))
        for blob in manifest.blobs:
            found[blob.digest] = await store.blob_size(Digest.parse(blob.digest)) is not None
    return found


async def all_in_store(data_dir: Path, *manifests: Manifest) -> bool:
    return all((await in_store(data_dir, *manifests)).values())


def requested(upstream: FakeRegistry, manifest: Manifest) -> list[str]:
    """Upstream requests (registry or CDN) naming the manifest or one of its blobs."""
    digests = {manifest.digest, *(b.digest for b in manifest.blobs)}
    return [r.path for r in upstream.requests if any(d in r.path for d in digests)]


# --- mirror prefetch --------------------------------------------------------------------------


async def test_prefetch_of_a_multiarch_index_by_platform_takes_that_platform_only(
    config_file: Path,
    upstream: FakeRegistry,
    multiarch: Manifest,
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    amd64, arm64 = multiarch.child("linux/amd64"), multiarch.child("linux/arm64")
    assert await prefetch(config_file, "library/multi:1", "--platform", "linux/arm64") == 0

    assert await all_in_store(data_dir, arm64)
    assert await in_store(data_dir, multiarch) == {multiarch.digest: True}
    assert not any((await in_store(data_dir, amd64)).values())
    assert requested(upstream, amd64) == [], "nothing of linux/amd64 is asked upstream"
    assert answered(upstream, kind="blob", method="GET") == len(arm64.blobs)

    out, err = capsys.readouterr()
    assert f"library/multi:1 {multiarch.digest[:19]} [linux/arm64]: 2 blobs fetched" in out
    assert "prefetched 1 of 1 images (1 platforms): 2 blobs fetched" in out
    assert "0 already cached" in out
    assert err == "", "no progress bars when stderr is not a terminal"


async def test_prefetch_takes_every_platform_by_default_and_again_fetches_nothing(
    config_file: Path,
    upstream: FakeRegistry,
    multiarch: Manifest,
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert await prefetch(config_file, "multi:1") == 0
    assert await all_in_store(data_dir, multiarch, *multiarch.children)
    blobs = len(multiarch.all_blobs())
    assert answered(upstream, kind="blob", method="GET") == blobs
    out = capsys.readouterr().out
    assert f"[linux/amd64, linux/arm64]: {blobs} blobs fetched" in out

    upstream.reset_counts()
    assert await prefetch(config_file, "multi:1") == 0
    # The tag is asked about (a HEAD), nothing is downloaded again.
    assert answered(upstream, kind="manifest", method="HEAD") == 1
    assert answered(upstream, kind="manifest", method="GET") == 0
    assert answered(upstream, kind="blob") == 0
    assert upstream.count(server="cdn") == 0
    out = capsys.readouterr().out
    assert f"0 blobs fetched (0 B), {blobs} already cached" in out


async def test_an_immutable_tag_is_not_asked_about_again(
    tmp_path: Path, upstream: FakeRegistry, alpine: Manifest, data_dir: Path
) -> None:
    rules = [{"tag_regex": r"3\.19", "immutable": True}]
    file = write_config(tmp_path / "immutable.toml", upstream.url, data_dir, tag_rules=rules)
    assert await prefetch(file, "alpine:3.19") == 0
    upstream.reset_counts()
    assert await prefetch(file, "alpine:3.19") == 0
    assert answered(upstream, kind="manifest") == 0


async def test_a_prefetch_is_not_counted_as_a_pull_but_its_accesses_are_recorded(
    config_file: Path, alpine: Manifest, data_dir: Path
) -> None:
    assert await prefetch(config_file, "alpine:3.19") == 0
    meta = await open_meta_store(redis_url=None, key_prefix="mirror:", data_dir=data_dir)
    try:
        assert await meta.top_repositories(10) == []
        assert await meta.get_access(alpine.digest) is not None
    finally:
        await meta.close()


async def test_a_prefetched_image_is_served_with_no_upstream_request(
    config_file: Path,
    upstream: FakeRegistry,
    alpine: Manifest,
    start_mirror: StartMirror,
) -> None:
    # The mirror runs on the same data dir while the prefetch does its work.
    mirror = await start_mirror(upstream.url)
    assert await prefetch(config_file, "alpine:3.19") == 0
    assert answered(upstream, kind="blob", method="GET") == len(alpine.blobs)

    upstream.reset_counts()
    await pull_like_docker(mirror, "library/alpine", "3.19")
    assert upstream.requests == [], "the tag record is fresh and every object is cached"


async def test_a_failed_image_is_named_and_the_others_are_still_prefetched(
    config_file: Path,
    upstream: FakeRegistry,
    alpine: Manifest,
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = await prefetch(
        config_file, "library/nope:1", "unserved.example/team/app:1", "Bad_Name", "alpine:3.19"
    )
    assert status == 1
    out, err = capsys.readouterr()
    assert "mirror: prefetch of library/nope:1 failed: no such image or tag" in err
    assert (
        "mirror: prefetch of unserved.example/team/app:1 failed: "
        "registry 'unserved.example' is not served by this mirror"
    ) in err
    assert "mirror: prefetch of Bad_Name failed: invalid repository name" in err
    assert await all_in_store(data_dir, alpine)
    assert "prefetched 1 of 4 images (1 platforms)" in out
    assert out.rstrip().endswith("; 3 failed")


async def test_an_unreachable_upstream_fails_the_image(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = write_config(tmp_path / "down.toml", f"http://127.0.0.1:{free_port()}", data_dir)
    assert await prefetch(file, "alpine:3.19") == 1
    err = capsys.readouterr().err
    assert "mirror: prefetch of alpine:3.19 failed: " in err
    assert "unreachable" in err


async def test_a_platform_the_index_lacks_fails_and_names_what_it_has(
    config_file: Path, multiarch: Manifest, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await prefetch(config_file, "multi:1", "--platform", "linux/s390x") == 1
    err = capsys.readouterr().err
    assert "no linux/s390x in the index; it has linux/amd64, linux/arm64" in err


async def test_without_images_the_configured_list_and_platforms_are_prefetched(
    tmp_path: Path,
    upstream: FakeRegistry,
    multiarch: Manifest,
    alpine: Manifest,
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    file = write_config(
        tmp_path / "list.toml",
        upstream.url,
        data_dir,
        prefetch="multi:1, alpine:3.19",
        prefetch_platforms="linux/amd64",
    )
    assert await prefetch(file) == 0
    amd64, arm64 = multiarch.child("linux/amd64"), multiarch.child("linux/arm64")
    assert await all_in_store(data_dir, multiarch, amd64, alpine)
    assert not any((await in_store(data_dir, arm64)).values())
    assert "prefetched 2 of 2 images (2 platforms)" in capsys.readouterr().out

    empty = write_config(tmp_path / "empty.toml", upstream.url, data_dir)
    assert await prefetch(empty) == 2
    assert "nothing to prefetch" in capsys.readouterr().err


async def test_the_command_takes_config_and_data_dir_and_draws_progress_bars(
    tmp_path: Path, upstream: FakeRegistry, alpine: Manifest
) -> None:
    elsewhere = tmp_path / "elsewhere"
    file = write_config(tmp_path / "cli.toml", upstream.url, tmp_path / "unused")
    result = await run_mirror(
        "prefetch",
        "--config",
        str(file),
        "--data-dir",
        str(elsewhere),
        "--progress",
        "always",
        "alpine:3.19",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert await all_in_store(elsewhere, alpine)
    assert not (tmp_path / "unused").exists()
    assert f"alpine:3.19 {alpine.digest[:19]} [linux/amd64]: 3 blobs fetched" in result.stdout
    assert "prefetched 1 of 1 images (1 platforms): 3 blobs fetched" in result.stdout
    # One bar per blob: the image's name and the blob's short digest, complete.
    for blob in alpine.blobs:
        short = blob.digest.removeprefix("sha256:")[:12]
        assert f"alpine {short}" in result.stderr
    assert result.stderr.count("100%") >= len(alpine.blobs)


# --- the server's schedule -------------------------------------------------------------------


async def test_the_server_prefetches_the_list_at_start_and_refreshes_it_every_interval(
    start_mirror: StartMirror, upstream: FakeRegistry, multiarch: Manifest, data_dir: Path
) -> None:
    await start_mirror(upstream.url, prefetch="library/multi:1", prefetch_interval=0.2)
    everything = (multiarch, *multiarch.children)
    await wait_until(
        lambda: all_in_store(data_dir, *everything),
        within=POLL_TIMEOUT,
        message="the list is cached",
    )
    heads = answered(upstream, kind="manifest", method="HEAD")
    assert heads >= 1
    # The tag is fresh for tag_ttl (300 s), yet the schedule asks about it again.
    await wait_until(
        lambda: answered(upstream, kind="manifest", method="HEAD") > heads,
        within=POLL_TIMEOUT,
        message="the tag is revalidated on the next interval",
    )
    assert answered(upstream, kind="blob", method="GET") == len(multiarch.all_blobs())


async def test_one_process_of_several_prefetches_in_an_interval(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    alpine: Manifest,
    data_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="mirror.cache.prefetch.schedule")
    settings: dict[str, Any] = {"prefetch": "alpine:3.19", "prefetch_interval": 3600}
    await start_mirror(upstream.url, **settings)
    await wait_until(
        lambda: all_in_store(data_dir, alpine),
        within=POLL_TIMEOUT,
        message="the list is cached",
    )
    assert answered(upstream, kind="manifest", method="HEAD") == 1
    # A second process on the same data dir (and metadata store) starts within the
    # interval: the first one's round counts for it, so it asks the upstream nothing.
    await start_mirror(upstream.url, **settings)
    await wait_until(
        lambda: "another process has this interval's round" in caplog.text,
        within=POLL_TIMEOUT,
        message="the second process's schedule passes its round",
    )
    assert answered(upstream, kind="manifest", method="HEAD") == 1

    # A changed list is another schedule: prefetched at once.
    upstream.push_image("library/other", "1", make_image(seed=7))
    await start_mirror(upstream.url, prefetch="alpine:3.19, other:1", prefetch_interval=3600)
    await wait_until(
        lambda: answered(upstream, kind="manifest", method="HEAD") == 3,
        within=POLL_TIMEOUT,
        message="the changed list is prefetched",
    )


# --- pinning ----------------------------------------------------------------------------------


async def pinned(
    tmp_path: Path, upstream: FakeRegistry, data_dir: Path, **settings: Any
) -> set[str]:
    file = write_config(tmp_path / "pins.toml", upstream.url, data_dir, **settings)
    cfg = config.load(config_file=file, environ={}).config
    meta = await open_meta_store(redis_url=None, key_prefix="mirror:", data_dir=data_dir)
    try:
        return {str(d) for d in await pinned_digests(cfg, FilesystemStore(data_dir), meta)}
    finally:
        await meta.close()


def digests(*manifests: Manifest) -> set[str]:
    return {d for m in manifests for d in (m.digest, *(b.digest for b in m.blobs))}


async def test_pinned_digests_are_exactly_what_the_prefetch_list_reaches(
    config_file: Path,
    tmp_path: Path,
    upstream: FakeRegistry,
    multiarch: Manifest,
    alpine: Manifest,
    data_dir: Path,
) -> None:
    assert await prefetch(config_file, "multi:1", "alpine:3.19") == 0
    amd64, arm64 = multiarch.child("linux/amd64"), multiarch.child("linux/arm64")

    assert await pinned(tmp_path, upstream, data_dir, prefetch="library/multi:1") == digests(
        multiarch, amd64, arm64
    )
    assert await pinned(
        tmp_path, upstream, data_dir, prefetch="multi:1", prefetch_platforms="linux/arm64"
    ) == digests(multiarch, arm64)
    assert await pinned(
        tmp_path, upstream, data_dir, prefetch=f"alpine@{alpine.digest}, multi:2"
    ) == digests(alpine)
    assert await pinned(tmp_path, upstream, data_dir) == set()
