"""`mirror tag SOURCE TARGET`, run as the real command on the data dir a server serves:
promotion within a hosted repository and from an upstream image, copying only what is
missing, and the server then serving the new tag over HTTP."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from testkit.fakeupstream import FakeRegistry, Manifest
from tests.conftest import Client, StartMirror, answered, content_files
from tests.hosted.pushing import HOSTED, image, index, push
from tests.runcli import run_cli


async def mirror_tag(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`mirror tag ARGS` with the config the test's server reads (`mirror.toml`, written
    by `start_mirror`), in a thread so the fake upstream keeps answering."""
    config = str(workdir / "mirror.toml")
    return await asyncio.to_thread(run_cli, "tag", *args, "--config", config, cwd=workdir)


@pytest.fixture
async def mirror(upstream: FakeRegistry, start_mirror: StartMirror) -> Client:
    return await start_mirror(upstream.url, hosted=HOSTED)


async def served_digest(mirror: Client, repo: str, reference: str) -> str | None:
    resp = await mirror.get(f"/v2/{repo}/manifests/{reference}")
    return resp.headers["Docker-Content-Digest"] if resp.status == 200 else None


async def test_a_promotion_within_a_hosted_repository_writes_no_content(
    mirror: Client, upstream: FakeRegistry, tmp_path: Path, data_dir: Path
) -> None:
    built = image("dev")
    digest = await push(mirror, "local/app", built, "dev")
    before = content_files(data_dir)

    done = await mirror_tag(tmp_path, "local/app:dev", "local/app:prod")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"tagged local/app:prod = {digest}: 0 manifests, 0 blobs recorded (4 already held), "
        "0 blobs fetched (0 B), 0 bytes re-uploaded"
    )
    assert await served_digest(mirror, "local/app", "prod") == digest
    tags = await (await mirror.get("/v2/local/app/tags/list")).json()
    assert tags["tags"] == ["dev", "prod"]
    assert content_files(data_dir) == before, "no byte written: the tag is a record"
    assert upstream.requests == []


async def test_a_promotion_into_another_hosted_repository_records_every_part_of_an_index(
    mirror: Client, tmp_path: Path, data_dir: Path
) -> None:
    children = [image("amd64"), image("arm64")]
    for child in children:
        await push(mirror, "local/app", child, child.digest)
    built = index(children)
    digest = await push(mirror, "local/app", built, "1.0")
    before = content_files(data_dir)

    done = await mirror_tag(tmp_path, f"local/app@{digest}", "registry.local/team/app:qa")

    assert done.returncode == 0, done.stderr
    assert "3 manifests, 6 blobs recorded (0 already held), 0 blobs fetched" in done.stdout
    repo = "registry.local/team/app"
    assert await served_digest(mirror, repo, "qa") == digest
    for child in children:
        assert await served_digest(mirror, repo, child.digest) == child.digest
        for blob in child.blobs:
            got = await mirror.get(f"/v2/{repo}/blobs/{blob.digest}")
            assert got.status == 200 and await got.read() == blob.data
    assert content_files(data_dir) == before


async def test_moving_a_tag_says_where_it_pointed_before(mirror: Client, tmp_path: Path) -> None:
    old = await push(mirror, "local/app", image("old"), "prod")
    new = await push(mirror, "local/app", image("new"), "dev")

    done = await mirror_tag(tmp_path, "local/app:dev", "local/app:prod")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f"; moved from {old}")
    assert await served_digest(mirror, "local/app", "prod") == new


async def test_an_upstream_image_is_pulled_once_then_promoted_without_fetching_again(
    mirror: Client, upstream: FakeRegistry, multiarch: Manifest, tmp_path: Path, data_dir: Path
) -> None:
    blobs = multiarch.all_blobs()

    first = await mirror_tag(tmp_path, "docker.io/library/multi:1", "local/base/multi:approved")

    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"tagged local/base/multi:approved = {multiarch.digest}: ")
    assert f"3 manifests, {len(blobs)} blobs recorded (0 already held), " in first.stdout
    assert f"{len(blobs)} blobs fetched" in first.stdout
    assert answered(upstream, kind="blob", method="GET") == len(blobs)
    stored = content_files(data_dir)

    upstream.reset_counts()
    second = await mirror_tag(tmp_path, "multi:1", "local/other:1")

    assert second.returncode == 0, second.stderr
    assert "0 blobs fetched (0 B), 0 bytes re-uploaded" in second.stdout
    assert answered(upstream, kind="blob") == 0
    assert content_files(data_dir) == stored, "the second promotion stores nothing"
    for repo, tag in (("local/base/multi", "approved"), ("local/other", "1")):
        assert await served_digest(mirror, repo, tag) == multiarch.digest
        for child in multiarch.children:
            assert await served_digest(mirror, repo, child.digest) == child.digest
            for blob in child.blobs:
                got = await mirror.get(f"/v2/{repo}/blobs/{blob.digest}")
                assert got.status == 200 and await got.read() == blob.data


@pytest.mark.parametrize(
    ("target", "complaint"),
    [
        (
            "library/alpine:promoted",
            "the target must be a hosted repository; the hosted repositories are local/*, "
            "registry.local/team/*",
        ),
        ("local/app@sha256:" + "0" * 64, "the target is a tag, not a digest"),
        ("local/App:1", "invalid repository name"),
        ("local/app:-bad", "invalid tag"),
    ],
)
async def test_a_target_that_is_not_a_hosted_tag_is_a_usage_error(
    mirror: Client, tmp_path: Path, target: str, complaint: str
) -> None:
    await push(mirror, "local/app", image("dev"), "dev")

    done = await mirror_tag(tmp_path, "local/app:dev", target)

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(f"mirror: {target}: ")
    assert complaint in done.stderr


async def test_a_missing_source_fails_and_tags_nothing(
    mirror: Client, upstream: FakeRegistry, tmp_path: Path
) -> None:
    hosted = await mirror_tag(tmp_path, "local/app:nope", "local/app:prod")
    pulled = await mirror_tag(tmp_path, "library/nothing:1", "local/app:prod")

    assert hosted.returncode == 1
    assert hosted.stderr == "mirror: local/app:nope: no such tag or manifest in local/app\n"
    assert pulled.returncode == 1
    assert pulled.stderr.startswith("mirror: cannot pull library/nothing:1: no such image or tag")
    assert await served_digest(mirror, "local/app", "prod") is None
