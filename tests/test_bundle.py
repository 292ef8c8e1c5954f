"""`mirror export` and `mirror import` through the real command: a bundle from one mirror's
data dir is a valid OCI image layout, and imported into a second data dir it is served by
an offline mirror with no upstream request. Bad bundles (a flipped byte, a truncated
archive, unsafe paths, links) are refused naming the entry, and change nothing."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from mirror import mediatypes
from mirror.meta import open_meta_store
from mirror.meta.store import TagKey, TagRecord
from testkit.clock import FakeClock
from testkit.fakeupstream import FakeRegistry, Manifest, make_image, make_layer
from testkit.mirrorproc import Completed, run_mirror
from tests.clients import ALL_MANIFESTS, pull_like_docker
from tests.conftest import Client, StartMirror, content_files

# What real clients send: skopeo and podman every type, containerd the modern four and
# */*, the Docker Engine the modern four and signed schema 1 (and application/json).
SKOPEO_ACCEPT = ", ".join(
    [
        mediatypes.OCI_MANIFEST,
        mediatypes.DOCKER_MANIFEST,
        mediatypes.DOCKER_SCHEMA1_SIGNED,
        mediatypes.DOCKER_SCHEMA1,
        mediatypes.DOCKER_MANIFEST_LIST,
        mediatypes.OCI_INDEX,
    ]
)
CONTAINERD_ACCEPT = ALL_MANIFESTS + ", */*"
DOCKER_ACCEPT = ALL_MANIFESTS + ", " + mediatypes.DOCKER_SCHEMA1_SIGNED + ", application/json"
CLIENT_ACCEPTS = (SKOPEO_ACCEPT, CONTAINERD_ACCEPT, DOCKER_ACCEPT, ALL_MANIFESTS)


async def mirror_cmd(*args: str, cwd: Path) -> Completed:
    # An empty dir: no ./mirror.toml is found.
    await asyncio.to_thread(cwd.mkdir, parents=True, exist_ok=True)
    return await run_mirror(*args, cwd=cwd, within=30.0)


async def pull_image(mirror: Client, name: str, tag: str, image: Manifest) -> None:
    """Pull a tag the way Docker does, every platform of an index."""
    if not image.is_index:
        await pull_like_docker(mirror, name, tag)
        return
    resp = await mirror.get(f"/v2/{name}/manifests/{tag}", headers={"Accept": ALL_MANIFESTS})
    assert resp.status == 200, await resp.text()
    assert await resp.read() == image.data
    for child in image.children:
        await pull_like_docker(mirror, name, child.digest)


async def filled_mirror(
    start_mirror: StartMirror, upstream: FakeRegistry, *images: tuple[str, str, Manifest]
) -> Client:
    mirror = await start_mirror(upstream.url)
    for name, tag, image in images:
        await pull_image(mirror, name, tag, image)
    return mirror


async def run_export(data_dir: Path, bundle: Path, *images: str, cwd: Path) -> Completed:
    """`mirror export`, whatever its outcome."""
    return await mirror_cmd(
        "export", "--data-dir", str(data_dir), "-o", str(bundle), *images, cwd=cwd
    )


async def export(data_dir: Path, bundle: Path, *images: str, cwd: Path) -> Completed:
    """`mirror export` that must succeed."""
    result = await run_export(data_dir, bundle, *images, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result


async def import_(data_dir: Path, bundle: Path, *flags: str, cwd: Path) -> Completed:
    return await mirror_cmd("import", "--data-dir", str(data_dir), str(bundle), *flags, cwd=cwd)


async def tag_records(data_dir: Path) -> list[tuple[TagKey, TagRecord]]:
    meta = await open_meta_store(redis_url=None, key_prefix="mirror:", data_dir=data_dir)
    try:
        return sorted(await meta.list_tags(), key=repr)
    finally:
        await meta.close()


async def state(data_dir: Path) -> tuple[set[str], list[tuple[TagKey, TagRecord]], list[str]]:
    """Everything an import may change: content and temp files, tag records, catalog."""
    meta = await open_meta_store(redis_url=None, key_prefix="mirror:", data_dir=data_dir)
    try:
        records = sorted(await meta.list_tags(), key=repr)
        repositories = await meta.list_repositories("docker.io")
    finally:
        await meta.close()
    return content_files(data_dir), records, repositories


def entries(bundle: Path) -> dict[str, bytes]:
    with tarfile.open(bundle) as tar:
        found = {}
        for member in tar:
            reader = tar.extractfile(member)
            assert reader is not None, member.name
            found[member.name] = reader.read()
        return found


def blob_entry(digest: str) -> str:
    algorithm, hex_ = digest.split(":")
    return f"blobs/{algorithm}/{hex_}"


def expected_entries(*images: Manifest) -> set[str]:
    names: set[str] = set()
    pending = list(images)
    while pending:
        manifest = pending.pop()
        names.add(blob_entry(manifest.digest))
        names.update(blob_entry(blob.digest) for blob in manifest.blobs)
        pending.extend(manifest.children)
    return names | {"oci-layout", "index.json", "mirror/tags.json"}


def rewrite(bundle: Path, target: Path, change: dict[str, bytes | None]) -> None:
    """A copy of `bundle` with some entries' data replaced (None drops the entry)."""
    with tarfile.open(bundle) as src, tarfile.open(target, "w") as dst:
        for member in src:
            reader = src.extractfile(member)
            assert reader is not None
            data = reader.read()
            if member.name in change:
                replaced = change[member.name]
                if replaced is None:
                    continue
                data = replaced
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data))


# --- export -----------------------------------------------------------------------------------


async def test_export_writes_an_oci_layout_of_the_images_with_every_blob_and_the_tag_records(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    alpine: Manifest,
    multiarch: Manifest,
    data_dir: Path,
    tmp_path: Path,
) -> None:
    await filled_mirror(
        start_mirror,
        upstream,
        ("library/alpine", "3.19", alpine),
        ("library/multi", "1", multiarch),
    )
    bundle = tmp_path / "out" / "bundle.tar"
    bundle.parent.mkdir()
    # The mirror is still running on the data dir: export works alongside it.
    result = await export(data_dir, bundle, "alpine:3.19", "multi:1", cwd=tmp_path / "cwd")
    assert "2 images" in result.stdout
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["bundle.tar"]  # no temp file

    found = entries(bundle)
    assert set(found) == expected_entries(alpine, multiarch)
    assert json.loads(found["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in found.items():
        if name.startswith("blobs/"):
            assert blob_entry("sha256:" + hashlib.sha256(data).hexdigest()) == name
    index = json.loads(found["index.json"])
    assert index["schemaVersion"] == 2
    assert [
        (d["annotations"]["org.opencontainers.image.ref.name"], d["digest"], d["mediaType"])
        for d in index["manifests"]
    ] == [
        ("docker.io/library/alpine:3.19", alpine.digest, alpine.media_type),
        ("docker.io/library/multi:1", multiarch.digest, multiarch.media_type),
    ]
    assert [d["size"] for d in index["manifests"]] == [alpine.size, multiarch.size]
    tags = json.loads(found["mirror/tags.json"])
    assert {(t["repository"], t["tag"], t["digest"]) for t in tags["tags"]} == {
        ("library/alpine", "3.19", alpine.digest),
        ("library/multi", "1", multiarch.digest),
    }
    assert tags["manifests"][multiarch.children[0].digest] == multiarch.children[0].media_type


async def test_exporting_an_image_that_is_not_cached_fails_naming_it_and_writes_nothing(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    alpine: Manifest,
    data_dir: Path,
    tmp_path: Path,
) -> None:
    await filled_mirror(start_mirror, upstream, ("library/alpine", "3.19", alpine))
    out = tmp_path / "out"
    out.mkdir()
    result = await run_export(
        data_dir, out / "b.tar", "alpine:3.19", "alpine:3.20", cwd=tmp_path / "cwd"
    )
    assert result.returncode == 1
    assert "docker.io/library/alpine:3.20 is not in the cache" in result.stderr
    assert list(out.iterdir()) == []


async def test_an_image_by_digest_is_exported_only_as_a_repository_that_holds_it(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    alpine: Manifest,
    data_dir: Path,
    tmp_path: Path,
) -> None:
    """What the mirror would not serve as library/alpine it does not export as it either."""
    app = make_image(layers=[make_layer({"app": b"team/app's own code\n"})])
    upstream.push_image("team/app", "v1", app)
    await filled_mirror(
        start_mirror, upstream, ("library/alpine", "3.19", alpine), ("team/app", "v1", app)
    )
    out = tmp_path / "out"
    out.mkdir()
    result = await run_export(data_dir, out / "b.tar", f"alpine@{app.digest}", cwd=tmp_path / "cwd")
    assert result.returncode == 1
    assert f"docker.io/library/alpine@{app.digest} is not known to be in library/alpine" in (
        result.stderr
    )
    assert list(out.iterdir()) == []
    await export(data_dir, out / "b.tar", f"team/app@{app.digest}", cwd=tmp_path / "cwd")


async def test_a_partly_cached_index_is_refused_unless_platform_names_the_cached_ones(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    multiarch: Manifest,
    data_dir: Path,
    tmp_path: Path,
) -> None:
    mirror = await start_mirror(upstream.url)
    amd64 = multiarch.child("linux/amd64")
    resp = await mirror.get("/v2/library/multi/manifests/1", headers={"Accept": ALL_MANIFESTS})
    assert resp.status == 200
    await pull_like_docker(mirror, "library/multi", amd64.digest)  # like a Docker on amd64
    cwd = tmp_path / "cwd"
    args = ("export", "--data-dir", str(data_dir), "-o", str(tmp_path / "b.tar"), "multi:1")

    refused = await mirror_cmd(*args, cwd=cwd)
    assert refused.returncode == 1
    arm64 = multiarch.child("linux/arm64").digest
    assert f"the linux/arm64 platform's manifest {arm64} is not cached" in refused.stderr
    assert "--platform" in refused.stderr

    done = await mirror_cmd(*args, "--platform", "linux/amd64", cwd=cwd)
    assert done.returncode == 0, done.stderr
    found = entries(tmp_path / "b.tar")
    assert set(found) == expected_entries(amd64) | {blob_entry(multiarch.digest)}
    assert json.loads(found["mirror/tags.json"])["omitted"] == [arm64]

    # That bundle imports (the child it leaves out is not an error), and an offline
    # mirror serves the index and the platform it holds.
    target = tmp_path / "b" / "data"
    imported = await import_(target, tmp_path / "b.tar", cwd=cwd)
    assert imported.returncode == 0, imported.stderr
    offline = await start_mirror(upstream.url, offline=True, data_dir=str(target))
    upstream.reset_counts()
    resp = await offline.get("/v2/library/multi/manifests/1", headers={"Accept": ALL_MANIFESTS})
    assert await resp.read() == multiarch.data
    await pull_like_docker(offline, "library/multi", amd64.digest)
    assert upstream.requests == []


# --- import: the good path --------------------------------------------------------------------


async def test_an_imported_bundle_is_served_offline_to_every_client_without_the_upstream(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    alpine: Manifest,
    multiarch: Manifest,
    data_dir: Path,
    tmp_path: Path,
) -> None:
    await filled_mirror(
        start_mirror,
        upstream,
        ("library/alpine", "3.19", alpine),
        ("library/multi", "1", multiarch),
    )
    bundle, cwd = tmp_path / "bundle.tar", tmp_path / "cwd"
    await export(data_dir, bundle, "alpine:3.19", "library/multi:1", cwd=cwd)

    target = tmp_path / "b" / "data"
    result = await import_(target, bundle, cwd=cwd)
    assert result.returncode == 0, result.stderr
    objects = len(expected_entries(alpine, multiarch)) - 3
    assert f"2 images, {objects} objects" in result.stdout
    assert f"{objects} new" in result.stdout

    upstream.reset_counts()
    offline = await start_mirror("http://127.0.0.1:9", offline=True, data_dir=str(target))
    await pull_image(offline, "library/alpine", "3.19", alpine)
    await pull_image(offline, "library/multi", "1", multiarch)
    # The tag answers whatever common client asks, though the exporting mirror had only
    # been asked with one Accept set.
    for accept in CLIENT_ACCEPTS:
        for name, tag, image in (
            ("library/alpine", "3.19", alpine),
            ("library/multi", "1", multiarch),
        ):
            resp = await offline.head(f"/v2/{name}/manifests/{tag}", headers={"Accept": accept})
            assert resp.status == 200, (accept, name)
            assert resp.headers["Docker-Content-Digest"] == image.digest
            assert resp.headers["Content-Type"] == image.media_type
    catalog = await offline.get("/v2/_catalog")
    assert {"library/alpine", "library/multi"} <= set((await catalog.json())["repositories"])
    assert upstream.requests == []


async def test_importing_the_same_bundle_again_changes_nothing_and_says_so(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    alpine: Manifest,
    data_dir: Path,
    tmp_path: Path,
) -> None:
    await filled_mirror(start_mirror, upstream, ("library/alpine", "3.19", alpine))
    bundle, cwd, target = tmp_path / "bundle.tar", tmp_path / "cwd", tmp_path / "b" / "data"
    await export(data_dir, bundle, "alpine:3.19", cwd=cwd)
    first = await import_(target, bundle, cwd=cwd)
    assert first.returncode == 0, first.stderr
    before = await state(target)
    assert before[1] and not any(p.startswith("tmp/") for p in before[0])

    again = await import_(target, bundle, cwd=cwd)
    assert again.returncode == 0, again.stderr
    assert "nothing new; 0 tag records new, 0 updated" in again.stdout
    assert await state(target) == before


async def test_dry_run_verifies_and_reports_but_changes_nothing(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    alpine: Manifest,
    data_dir: Path,
    tmp_path: Path,
) -> None:
    await filled_mirror(start_mirror, upstream, ("library/alpine", "3.19", alpine))
    bundle, cwd, target = tmp_path / "bundle.tar", tmp_path / "cwd", tmp_path / "b" / "data"
    await export(data_dir, bundle, "alpine:3.19", cwd=cwd)
    before = await state(target)
    result = await import_(target, bundle, "--dry-run", cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("would import")
    assert f"{len(alpine.blobs) + 1} new" in result.stdout
    assert await state(target) == before


async def test_a_digest_reference_exports_that_manifest_and_imports_without_a_tag(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    alpine: Manifest,
    data_dir: Path,
    tmp_path: Path,
) -> None:
    await filled_mirror(start_mirror, upstream, ("library/alpine", "3.19", alpine))
    bundle, cwd, target = tmp_path / "bundle.tar", tmp_path / "cwd", tmp_path / "b" / "data"
    await export(data_dir, bundle, f"alpine@{alpine.digest}", cwd=cwd)
    index = json.loads(entries(bundle)["index.json"])
    ref = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
    assert ref == f"docker.io/library/alpine@{alpine.digest}"
    assert (await import_(target, bundle, cwd=cwd)).returncode == 0
    assert await tag_records(target) == []
    offline = await start_mirror(upstream.url, offline=True, data_dir=str(target))
    upstream.reset_counts()
    await pull_like_docker(offline, "library/alpine", alpine.digest)
    assert upstream.requests == []


async def test_an_older_bundle_does_not_move_a_tag_back_and_a_newer_one_moves_it(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    alpine: Manifest,
    data_dir: Path,
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    mirror = await start_mirror(upstream.url, clock=clock, tag_ttl=60)
    cwd = tmp_path / "cwd"
    await pull_image(mirror, "library/alpine", "3.19", alpine)
    old = tmp_path / "old.tar"
    await export(data_dir, old, "alpine:3.19", cwd=cwd)

    moved = make_image(layers=[make_layer({"etc/alpine-release": b"3.19.1\n"})])
    upstream.tag("library/alpine", "3.19", moved)
    clock.advance(120)
    await pull_image(mirror, "library/alpine", "3.19", moved)
    new = tmp_path / "new.tar"
    await export(data_dir, new, "alpine:3.19", cwd=cwd)

    target = tmp_path / "b" / "data"
    assert (await import_(target, new, cwd=cwd)).returncode == 0
    stale = await import_(target, old, cwd=cwd)
    assert stale.returncode == 0, stale.stderr
    assert "kept docker.io/library/alpine:3.19" in stale.stderr
    assert {str(record.digest) for _, record in await tag_records(target)} == {moved.digest}

    other = tmp_path / "c" / "data"
    assert (await import_(other, old, cwd=cwd)).returncode == 0
    newer = await import_(other, new, cwd=cwd)
    assert "0 tag records new, 3 updated" in newer.stdout  # its own and two for other clients
    assert {str(record.digest) for _, record in await tag_records(other)} == {moved.digest}


# --- import: bad bundles change nothing -------------------------------------------------------


@pytest.fixture
async def two_bundles(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    alpine: Manifest,
    multiarch: Manifest,
    data_dir: Path,
    tmp_path: Path,
) -> tuple[Path, Path, Path]:
    """(alpine only, alpine and multi, a data dir that already holds alpine)."""
    await filled_mirror(
        start_mirror,
        upstream,
        ("library/alpine", "3.19", alpine),
        ("library/multi", "1", multiarch),
    )
    cwd = tmp_path / "cwd"
    small, both = tmp_path / "small.tar", tmp_path / "both.tar"
    await export(data_dir, small, "alpine:3.19", cwd=cwd)
    await export(data_dir, both, "alpine:3.19", "multi:1", cwd=cwd)
    target = tmp_path / "target" / "data"
    assert (await import_(target, small, cwd=cwd)).returncode == 0
    return small, both, target


async def refused(target: Path, bundle: Path, cwd: Path) -> str:
    """Import `bundle`, expect a refusal that changes nothing; its message."""
    before = await state(target)
    result = await import_(target, bundle, cwd=cwd)
    assert result.returncode == 1, result.stdout
    assert "refused, nothing was imported" in result.stderr
    assert await state(target) == before
    return result.stderr


async def test_a_bundle_with_one_flipped_byte_is_refused_naming_the_entry(
    two_bundles: tuple[Path, Path, Path], multiarch: Manifest, tmp_path: Path
) -> None:
    _, both, target = two_bundles
    layer = multiarch.child("linux/arm64").layers[0]
    name = blob_entry(layer.digest)
    with tarfile.open(both) as tar:
        member = tar.getmember(name)
    raw = bytearray(both.read_bytes())
    raw[member.offset_data + member.size // 2] ^= 0x01
    corrupt = tmp_path / "corrupt.tar"
    corrupt.write_bytes(bytes(raw))
    message = await refused(target, corrupt, tmp_path / "cwd")
    assert f"{name}: corrupt: its content hashes to sha256:" in message


async def test_a_truncated_bundle_is_refused_wherever_it_is_cut(
    two_bundles: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, both, target = two_bundles
    with tarfile.open(both) as tar:
        members = tar.getmembers()
    raw = both.read_bytes()
    last = members[-1]
    cuts = {
        "in the middle of an entry": (last.offset_data + last.size // 2, last.name),
        "between entries": (last.offset, last.name),
        "in the metadata": (members[1].offset_data + 3, "index.json"),
    }
    for why, (cut, entry) in cuts.items():
        truncated = tmp_path / "truncated.tar"
        truncated.write_bytes(raw[:cut])
        message = await refused(target, truncated, tmp_path / "cwd")
        assert entry in message, (why, message)
    (tmp_path / "empty.tar").write_bytes(b"")
    assert "not a readable tar archive" in await refused(
        target, tmp_path / "empty.tar", tmp_path / "cwd"
    )


async def test_a_bundle_naming_content_it_lacks_is_refused(
    two_bundles: tuple[Path, Path, Path], multiarch: Manifest, tmp_path: Path
) -> None:
    _, both, target = two_bundles
    config = blob_entry(multiarch.child("linux/amd64").config.digest)
    lacking = tmp_path / "lacking.tar"
    rewrite(both, lacking, {config: None})
    message = await refused(target, lacking, tmp_path / "cwd")
    assert f"{config}: named by manifest {multiarch.child('linux/amd64').digest}" in message


def unsafe_bundle(valid: Path, target: Path, member: tarfile.TarInfo, data: bytes = b"") -> None:
    """A copy of a valid bundle with one more entry after its metadata."""
    with tarfile.open(valid) as src, tarfile.open(target, "w") as dst:
        for index, original in enumerate(src):
            reader = src.extractfile(original)
            assert reader is not None
            dst.addfile(original, io.BytesIO(reader.read()))
            if index == 2:
                member.size = len(data)
                dst.addfile(member, io.BytesIO(data) if member.isreg() else None)


UNSAFE_ENTRIES = [
    ("../escaped", tarfile.REGTYPE, "unsafe path"),
    ("/etc/escaped", tarfile.REGTYPE, "unsafe path"),
    ("blobs/sha256/../../../escaped", tarfile.REGTYPE, "unsafe path"),
    ("blobs/sha256/" + "0" * 64, tarfile.SYMTYPE, "is a link"),
    ("blobs/sha256/" + "1" * 64, tarfile.LNKTYPE, "is a link"),
    ("blobs/sha256/" + "2" * 64, tarfile.FIFOTYPE, "not a regular file"),
    ("blobs/sha256/deadbeef", tarfile.REGTYPE, "not named by a digest"),
    ("notes.txt", tarfile.REGTYPE, "unexpected entry"),
]


async def test_unsafe_or_unexpected_entries_are_refused(
    two_bundles: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    small, _, target = two_bundles
    for name, kind, message in UNSAFE_ENTRIES:
        member = tarfile.TarInfo(name)
        member.type = kind
        if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
            member.linkname = "/etc/passwd"
        unsafe = tmp_path / "unsafe.tar"
        unsafe_bundle(small, unsafe, member, b"x" if kind == tarfile.REGTYPE else b"")
        stderr = await refused(target, unsafe, tmp_path / "cwd")
        assert f"{name}: " in stderr and message in stderr, stderr
        assert not (tmp_path / "escaped").exists()
        assert not (target / "escaped").exists()


async def test_a_bundle_with_a_tampered_tag_record_is_refused(
    two_bundles: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    small, _, target = two_bundles
    tags: dict[str, Any] = json.loads(entries(small)["mirror/tags.json"])
    tags["tags"][0]["digest"] = "sha256:" + "2" * 64
    tampered = tmp_path / "tampered.tar"
    rewrite(small, tampered, {"mirror/tags.json": json.dumps(tags).encode()})
    message = await refused(target, tampered, tmp_path / "cwd")
    assert f"blobs/sha256/{'2' * 64}: named by mirror/tags.json, but not in the bundle" in message
