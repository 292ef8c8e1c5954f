"""Deterministic, realistic image content for the fake upstream registry.

Tests need real manifests and blobs (correct digests, sizes, descriptors,
gzip'd tar layers) so the mirror's verification logic is exercised for real,
and they need them to be reproducible so assertions can name digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

__all__ = [
    "DOCKER_CONFIG",
    "DOCKER_LAYER",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "INDEX_MEDIA_TYPES",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_MANIFEST",
    "Blob",
    "Manifest",
    "make_image",
    "make_index",
    "make_layer",
    "make_referrer",
    "random_layer",
    "sha256_digest",
]

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

INDEX_MEDIA_TYPES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})


def sha256_digest(data: bytes) -> str:
    """Return the OCI digest string of ``data``; one helper so every digest is spelled alike."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _dumps(obj: Any) -> bytes:
    """Serialize once; the odd indent means a client that re-serializes breaks the digest."""
    return json.dumps(obj, indent=3).encode()


@dataclass(frozen=True)
class Blob:
    """A content-addressed blob (config or layer) as the registry stores it."""

    data: bytes
    media_type: str
    # sha256 of the uncompressed tar for make_layer() layers; None means "use the digest".
    diff_id: str | None = field(default=None, compare=False)

    @cached_property
    def digest(self) -> str:
        """Digest of the exact bytes, computed once because big blobs are slow to hash."""
        return sha256_digest(self.data)

    @property
    def size(self) -> int:
        """Length in bytes, as written in descriptors and Content-Length."""
        return len(self.data)

    def __repr__(self) -> str:
        """By digest: a failing assertion must not print megabytes of bytes."""
        return f"Blob({self.digest}, {self.size} bytes, {self.media_type})"

    def descriptor(self) -> dict[str, Any]:
        """OCI descriptor for this blob, for embedding in a manifest."""
        return {"mediaType": self.media_type, "size": self.size, "digest": self.digest}


@dataclass(frozen=True)
class Manifest:
    """An image manifest or an index/manifest list, kept as the exact bytes that get served."""

    data: bytes
    media_type: str
    blobs: tuple[Blob, ...] = ()
    children: tuple[Manifest, ...] = ()
    platform: str | None = None

    @cached_property
    def digest(self) -> str:
        """Digest of the exact bytes; the registry's identity for this manifest."""
        return sha256_digest(self.data)

    @property
    def size(self) -> int:
        """Length in bytes, as sent in Content-Length."""
        return len(self.data)

    @property
    def is_index(self) -> bool:
        """True for a Docker manifest list or an OCI index."""
        return self.media_type in INDEX_MEDIA_TYPES

    @property
    def config(self) -> Blob:
        """The config blob of an image manifest (the first entry of ``blobs``)."""
        if not self.blobs:
            raise ValueError("an index has no config blob")
        return self.blobs[0]

    @property
    def layers(self) -> tuple[Blob, ...]:
        """The layer blobs of an image manifest, in order."""
        return self.blobs[1:]

    def all_blobs(self) -> tuple[Blob, ...]:
        """Every blob reachable from this manifest, children included, without duplicates."""
        seen: dict[str, Blob] = {}
        for blob in self.blobs:
            seen.setdefault(blob.digest, blob)
        for child in self.children:
            for blob in child.all_blobs():
                seen.setdefault(blob.digest, blob)
        return tuple(seen.values())

    def child(self, platform: str) -> Manifest:
        """The child manifest for ``platform`` ("linux/amd64"), for index tests."""
        for candidate in self.children:
            if candidate.platform == platform:
                return candidate
        raise KeyError(platform)


def make_layer(files: dict[str, bytes], *, oci: bool = False) -> Blob:
    """Build a real gzip'd tar layer; mtime=0 everywhere so equal input gives equal digests."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            content = files[name]
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    compressed = gzip.compress(tar_bytes, mtime=0)
    return Blob(
        data=compressed,
        media_type=OCI_LAYER if oci else DOCKER_LAYER,
        diff_id=sha256_digest(tar_bytes),
    )


def random_layer(size: int, seed: int, *, oci: bool = False) -> Blob:
    """Incompressible pseudo-random bytes typed as a layer, for fast big-blob tests."""
    data = random.Random(seed).randbytes(size)
    return Blob(data=data, media_type=OCI_LAYER if oci else DOCKER_LAYER)


def _split_platform(platform: str) -> dict[str, str]:
    """Turn "os/arch[/variant]" into the descriptor platform object."""
    parts = platform.split("/")
    result = {"architecture": parts[1], "os": parts[0]}
    if len(parts) > 2:
        result["variant"] = parts[2]
    return result


def make_image(
    *,
    layers: Sequence[Blob] | None = None,
    arch: str = "amd64",
    os: str = "linux",
    oci: bool = False,
    seed: int = 0,
) -> Manifest:
    """Build a real single-platform image: config JSON plus a schema2 or OCI manifest."""
    if layers is None:
        content = f"fake image seed={seed} platform={os}/{arch}\n".encode()
        layers = [make_layer({"etc/fake-release": content}, oci=oci)]
    config_obj = {
        "architecture": arch,
        "os": os,
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": {"fake.seed": str(seed)},
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": [layer.diff_id or layer.digest for layer in layers],
        },
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "fakeupstream"}]
        * len(layers),
    }
    config = Blob(data=_dumps(config_obj), media_type=OCI_CONFIG if oci else DOCKER_CONFIG)
    media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
    manifest_obj = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    }
    return Manifest(
        data=_dumps(manifest_obj),
        media_type=media_type,
        blobs=(config, *layers),
        platform=f"{os}/{arch}",
    )


def make_index(children: Sequence[Manifest], *, oci: bool = False) -> Manifest:
    """Build a Docker manifest list or OCI index whose entries carry each child's platform."""
    entries = []
    for child in children:
        if child.platform is None:
            raise ValueError("every child of an index needs a platform (use make_image)")
        entries.append(
            {
                "mediaType": child.media_type,
                "size": child.size,
                "digest": child.digest,
                "platform": _split_platform(child.platform),
            }
        )
    media_type = OCI_INDEX if oci else DOCKER_MANIFEST_LIST
    index_obj = {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}
    return Manifest(data=_dumps(index_obj), media_type=media_type, children=tuple(children))


def make_referrer(
    subject: Manifest,
    artifact_type: str,
    *,
    seed: int = 0,
    annotations: dict[str, str] | None = None,
) -> Manifest:
    """An OCI artifact manifest (a signature, an SBOM) naming `subject`: the empty config,
    one layer of `artifact_type` unique per `seed`, and its annotations."""
    config = Blob(data=b"{}", media_type=OCI_EMPTY)
    payload = f"{artifact_type} of {subject.digest} #{seed}".encode()
    layer = Blob(data=payload, media_type=artifact_type)
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
        "subject": {
            "mediaType": subject.media_type,
            "digest": subject.digest,
            "size": subject.size,
        },
    }
    if annotations:
        document["annotations"] = annotations
    return Manifest(data=_dumps(document), media_type=OCI_MANIFEST, blobs=(config, layer))
