"""skopeo copies through the mirror and checks of what they wrote: a `dir:` copy or an
`oci:` layout holds exactly the descriptors' blobs, each of its size and digest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from testkit.mirrorserver import MirrorServer
from testkit.skopeo import skopeo
from testkit.upstream import SeededImage

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def source(mirror: MirrorServer, image: SeededImage, *, repo: str | None = None) -> str:
    return f"docker://{mirror.host}/{repo or image.repo}:{image.tag}"


def copy(
    mirror: MirrorServer,
    image: SeededImage,
    dest: str,
    *options: str,
    global_options: tuple[str, ...] = (),
) -> None:
    """`skopeo GLOBAL_OPTIONS copy OPTIONS` of `image` through the mirror to `dest`; fails
    with skopeo's stderr and the mirror's log if skopeo fails."""
    result = skopeo(
        *global_options, "copy", "--src-tls-verify=false", *options, source(mirror, image), dest
    )
    assert result.returncode == 0, (
        f"skopeo copy {image.ref} failed:\n{result.stderr}\nmirror log:\n{mirror.stderr}"
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def hex_of(digest: str) -> str:
    return digest.removeprefix("sha256:")


def check_dir_copy(target: Path, manifest_digest: str) -> dict[str, Any]:
    """A `dir:` copy: `manifest.json` hashes to `manifest_digest`, and the directory holds
    exactly the manifest, a version file and one file per config and layer, each named by
    its digest, as large as its descriptor says, and hashing to that digest. Returns the
    manifest."""
    manifest_path = target / "manifest.json"
    assert sha256_file(manifest_path) == manifest_digest
    manifest: dict[str, Any] = json.loads(manifest_path.read_bytes())
    descriptors = [manifest["config"], *manifest["layers"]]
    expected = {"manifest.json", "version"} | {hex_of(d["digest"]) for d in descriptors}
    assert {p.name for p in target.iterdir()} == expected
    for descriptor in descriptors:
        blob = target / hex_of(descriptor["digest"])
        assert blob.stat().st_size == descriptor["size"], descriptor
        assert sha256_file(blob) == descriptor["digest"], descriptor
    return manifest


def blob_digests(manifest: dict[str, Any]) -> list[str]:
    return [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]


def check_oci_copy(target: Path, top_digest: str) -> set[str]:
    """An `oci:` layout copy: index.json names `top_digest`; every blob file hashes to its
    name; walking from the top (through an index, into each platform) finds every
    descriptor's blob with the descriptor's size and digest. Returns the config and layer
    digests reached."""
    blob_dir = target / "blobs" / "sha256"
    for path in blob_dir.iterdir():
        assert sha256_file(path) == "sha256:" + path.name, f"{path.name} is corrupt"
    index = json.loads((target / "index.json").read_bytes())
    assert [m["digest"] for m in index["manifests"]] == [top_digest]

    def read(descriptor: dict[str, Any]) -> bytes:
        data = (blob_dir / hex_of(descriptor["digest"])).read_bytes()
        assert len(data) == descriptor["size"], descriptor
        return data

    reached: set[str] = set()
    pending = [index["manifests"][0]]
    while pending:
        descriptor = pending.pop()
        document = json.loads(read(descriptor))
        if descriptor["mediaType"] == OCI_INDEX:
            pending.extend(document["manifests"])
            continue
        for blob in [document["config"], *document["layers"]]:
            read(blob)
            reached.add(blob["digest"])
    return reached
