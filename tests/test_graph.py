"""The manifest-graph walk every command shares: depth first in the index's order, each
manifest asked for once, children a selector leaves out noted, missing ones told apart,
and an order that publishes children before what names them."""

from __future__ import annotations

import hashlib
import json

from mirror.cache.graph import ManifestWalk
from mirror.mediatypes import OCI_MANIFEST
from mirror.platforms import selector
from mirror.reference import Digest


def digest_of(data: bytes) -> Digest:
    return Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())


def image(seed: str) -> tuple[bytes, list[Digest]]:
    """An image manifest and its config and layer digests."""
    blobs = [digest_of(f"{seed} config".encode()), digest_of(f"{seed} layer".encode())]
    document = {
        "schemaVersion": 2,
        "config": {"digest": str(blobs[0])},
        "layers": [{"digest": str(blobs[1])}],
    }
    return json.dumps(document).encode(), blobs


def index(*children: tuple[Digest, str | None]) -> bytes:
    manifests = []
    for digest, platform in children:
        descriptor: dict[str, object] = {"digest": str(digest), "mediaType": OCI_MANIFEST}
        if platform is not None:
            os_, arch = platform.split("/")
            descriptor["platform"] = {"os": os_, "architecture": arch}
        manifests.append(descriptor)
    return json.dumps({"schemaVersion": 2, "manifests": manifests}).encode()


AMD64, AMD64_BLOBS = image("amd64")
ARM64, ARM64_BLOBS = image("arm64")
NONE, NONE_BLOBS = image("attestation")
INDEX = index((digest_of(AMD64), "linux/amd64"), (digest_of(ARM64), "linux/arm64"))
# A second index sharing the amd64 child, with a child naming no platform.
OTHER = index((digest_of(AMD64), "linux/amd64"), (digest_of(NONE), None))
CONTENT = {digest_of(data): data for data in (AMD64, ARM64, NONE, INDEX, OTHER)}


def run(walk: ManifestWalk, have: dict[Digest, bytes]) -> list[Digest]:
    """Drive a walk over `have`; the manifests asked for, in order."""
    asked = []
    for edge in walk:
        asked.append(edge.digest)
        if edge.digest in have:
            walk.visit(edge, have[edge.digest])
    return asked


def test_a_walk_asks_for_each_manifest_once_depth_first_and_notes_every_blob() -> None:
    walk = ManifestWalk([digest_of(INDEX), digest_of(OTHER)])
    asked = run(walk, CONTENT)
    amd64, arm64, none = digest_of(AMD64), digest_of(ARM64), digest_of(NONE)
    assert asked == [digest_of(INDEX), amd64, arm64, digest_of(OTHER), none]
    assert list(walk.blobs) == [*AMD64_BLOBS, *ARM64_BLOBS, *NONE_BLOBS]
    assert walk.blobs[AMD64_BLOBS[0]] == amd64
    assert walk.seen[none].parent == digest_of(OTHER)
    assert walk.seen[none].platform is None
    assert walk.seen[amd64].platform == "linux/amd64"
    assert walk.seen[amd64].media_type == OCI_MANIFEST


def test_children_finish_before_every_manifest_that_names_them() -> None:
    walk = ManifestWalk([digest_of(INDEX), digest_of(OTHER)])
    run(walk, CONTENT)
    order = walk.finished
    assert order.index(digest_of(AMD64)) < order.index(digest_of(INDEX))
    assert order.index(digest_of(AMD64)) < order.index(digest_of(OTHER))
    assert order.index(digest_of(NONE)) < order.index(digest_of(OTHER))
    assert sorted(map(str, order)) == sorted(map(str, CONTENT))


def test_a_selector_leaves_children_out_and_a_missing_manifest_is_named_not_read() -> None:
    walk = ManifestWalk([digest_of(INDEX), digest_of(OTHER)], selector(["linux/amd64"]))
    have = {d: data for d, data in CONTENT.items() if d != digest_of(AMD64)}
    assert run(walk, have) == [digest_of(INDEX), digest_of(AMD64), digest_of(OTHER)]
    assert walk.omitted == {digest_of(ARM64), digest_of(NONE)}
    assert digest_of(AMD64) not in walk.visited
    assert walk.reached == {digest_of(INDEX), digest_of(OTHER), digest_of(AMD64)}
    assert walk.blobs == {}
