"""Which children of an index a platform list selects: one rule (`mirror.platforms`, as
containerd and Docker match), so `mirror prefetch --platform P` caches exactly what
`mirror export --platform P` then writes, variants and platform-less children included."""

from __future__ import annotations

import asyncio
import json
import tarfile
from pathlib import Path

import pytest

from mirror import cli, mediatypes
from mirror.platforms import normalise, parse_platform, platform_matches
from mirror.reference import Digest
from mirror.storage.filesystem import FilesystemStore
from testkit.fakeupstream import FakeRegistry, Manifest, make_image
from tests.conftest import toml_value

# --- the matcher ----------------------------------------------------------------------------


def test_platforms_parse_as_os_arch_and_an_optional_variant() -> None:
    assert parse_platform(" Linux/ARM64/v8 ") == "linux/arm64/v8"
    for text in ("amd64", "linux/", "linux/arm/v7/x", "linux amd64"):
        with pytest.raises(ValueError, match="not a platform"):
            parse_platform(text)


def test_platforms_normalise_as_containerd_does() -> None:
    assert normalise("linux/arm64") == normalise("linux/arm64/v8") == ("linux", "arm64", "v8")
    assert normalise("linux/aarch64") == ("linux", "arm64", "v8")
    assert normalise("linux/arm") == normalise("linux/arm/7") == ("linux", "arm", "v7")
    assert normalise("linux/armhf") == ("linux", "arm", "v7")
    assert normalise("linux/armel") == ("linux", "arm", "v6")
    assert normalise("linux/x86_64") == normalise("linux/amd64/v1") == ("linux", "amd64", "")


def test_platforms_match_by_os_and_arch_and_variant() -> None:
    assert platform_matches(["linux/arm64"], "linux/arm64/v8")
    assert platform_matches(["linux/arm64/v8"], "linux/arm64")
    assert platform_matches(["linux/arm"], "linux/arm/v7")
    assert platform_matches(["linux/arm/v7"], "linux/arm")
    assert not platform_matches(["linux/arm"], "linux/arm/v6")
    assert not platform_matches(["linux/arm/v6"], "linux/arm/v7")
    assert not platform_matches(["linux/amd64"], "linux/arm64")
    assert not platform_matches(["linux/amd64"], "linux/amd64/v3")
    assert not platform_matches(["linux/amd64"], "windows/amd64")
    assert platform_matches(["linux/amd64", "linux/arm/v6"], "linux/arm/v6")


def test_a_child_without_a_platform_is_selected_only_when_no_platform_is_asked_for() -> None:
    assert platform_matches([], None)
    assert platform_matches([], "linux/s390x")
    assert not platform_matches(["linux/amd64"], None)


# --- prefetch and export agree ----------------------------------------------------------------

# The index's children, by the platform its descriptor gives them (None: it gives none, as
# for an attestation manifest).
CHILDREN: dict[str | None, Manifest] = {
    "linux/amd64": make_image(arch="amd64", seed=11),
    "linux/arm64/v8": make_image(arch="arm64", seed=12),
    "linux/arm/v6": make_image(arch="arm", seed=13),
    "linux/arm/v7": make_image(arch="arm", seed=14),
    None: make_image(arch="unknown", os="unknown", seed=15, oci=True),
}


def _descriptor(platform: str | None, child: Manifest) -> dict[str, object]:
    descriptor: dict[str, object] = {
        "mediaType": child.media_type,
        "digest": child.digest,
        "size": child.size,
    }
    if platform is not None:
        os_, arch, *variant = platform.split("/")
        descriptor["platform"] = {"os": os_, "architecture": arch} | (
            {"variant": variant[0]} if variant else {}
        )
    return descriptor


def _index() -> Manifest:
    document = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_INDEX,
        "manifests": [_descriptor(platform, child) for platform, child in CHILDREN.items()],
    }
    return Manifest(
        data=json.dumps(document).encode(),
        media_type=mediatypes.OCI_INDEX,
        children=tuple(CHILDREN.values()),
    )


async def _command(*args: str) -> int:
    """A `mirror` command in this process (its own event loop, in a thread, so the fake
    upstream in the test's loop keeps answering)."""
    return await asyncio.to_thread(cli.main, list(args))


def _exported(bundle: Path) -> dict[str, list[str]]:
    with tarfile.open(bundle) as tar:
        reader = tar.extractfile("mirror/tags.json")
        assert reader is not None
        tags = json.load(reader)
    return {"manifests": sorted(tags["manifests"]), "omitted": tags["omitted"]}


@pytest.mark.parametrize(
    ("wanted", "selected"),
    [
        ([], [*CHILDREN]),
        (["linux/arm64"], ["linux/arm64/v8"]),
        (["linux/arm64/v8"], ["linux/arm64/v8"]),
        (["linux/arm"], ["linux/arm/v7"]),
        (["linux/arm/v7"], ["linux/arm/v7"]),
        (["linux/arm/v6"], ["linux/arm/v6"]),
        (["linux/amd64", "linux/arm/v6"], ["linux/amd64", "linux/arm/v6"]),
    ],
)
async def test_prefetch_and_export_select_the_same_children(
    tmp_path: Path,
    upstream: FakeRegistry,
    data_dir: Path,
    wanted: list[str],
    selected: list[str | None],
) -> None:
    index = _index()
    upstream.push_image("library/multi", "1", index)
    config_file = tmp_path / "mirror.toml"
    config_file.write_text(
        f"upstream = {toml_value(upstream.url)}\ndata_dir = {toml_value(str(data_dir))}\n"
    )
    platforms = [arg for platform in wanted for arg in ("--platform", platform)]

    assert await _command("prefetch", "--config", str(config_file), "multi:1", *platforms) == 0
    store = FilesystemStore(data_dir)
    cached = [
        p for p, child in CHILDREN.items() if await store.has_manifest(Digest.parse(child.digest))
    ]
    assert cached == selected

    # Export finds every child it selects in the cache (it refuses otherwise), and selects
    # no other.
    bundle = tmp_path / "bundle.tar"
    exported = await _command(
        "export", "--config", str(config_file), "-q", "-o", str(bundle), "multi:1", *platforms
    )
    assert exported == 0
    left_out = [child.digest for p, child in CHILDREN.items() if p not in selected]
    assert _exported(bundle) == {
        "manifests": sorted([index.digest, *(CHILDREN[p].digest for p in selected)]),
        "omitted": sorted(left_out),
    }
