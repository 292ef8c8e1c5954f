"""OCI image layouts built on disk from generated content, to seed the real upstream with.

Everything is deterministic: the same calls give the same bytes and so the same digests.
Layers are real gzip-compressed tar archives (fixed mtimes, owners and modes) whose config
lists the correct `diff_ids`; a file's content is either given bytes or `RandomContent`, which
is streamed (never held in memory) and hashed while it is written, so a 100 MB layer costs
one pass over the disk.

    layout = Layout(tmp / "alpine")
    base = layout.add_layer({"etc/os-release": b"..."})
    image = layout.add_image([base], arch="amd64")
    layout.tag("3.19", image.descriptor)
    # skopeo copy oci:<tmp>/alpine:3.19 docker://...
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class RandomContent:
    """`size` bytes of seeded pseudo-random (so incompressible) data, generated while written."""

    size: int
    seed: int


FileContent = bytes | RandomContent


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.platform:
            out["platform"] = dict(self.platform)
        return out


@dataclass(frozen=True)
class Layer:
    descriptor: Descriptor
    diff_id: str  # sha256 of the uncompressed tar


@dataclass(frozen=True)
class Image:
    """One platform's manifest: its descriptor and the blobs it references."""

    descriptor: Descriptor
    config: Descriptor
    layers: tuple[Layer, ...]

    @property
    def blobs(self) -> list[Descriptor]:
        return [self.config, *(layer.descriptor for layer in self.layers)]


@dataclass(frozen=True)
class Index:
    """A multi-platform index and its images, by "os/arch"."""

    descriptor: Descriptor
    images: Mapping[str, Image] = field(default_factory=dict)


class _HashingWriter(io.RawIOBase):
    """Passes writes on to `sink`, hashing and counting them."""

    def __init__(self, sink: Callable[[Any], object]) -> None:
        super().__init__()
        self.sink = sink
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: ReadableBuffer, /) -> int:
        data = memoryview(b)
        self.hash.update(data)
        self.size += data.nbytes
        self.sink(data)
        return data.nbytes

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


class _RandomReader(io.RawIOBase):
    """Reads `RandomContent` chunk by chunk."""

    def __init__(self, content: RandomContent) -> None:
        super().__init__()
        self.left = content.size
        self.rng = random.Random(content.seed)
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        if not self.pending and self.left > 0:
            n = min(CHUNK, self.left)
            self.pending = self.rng.randbytes(n)
            self.left -= n
        n = min(len(view), len(self.pending))
        view[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n


def _tar_info(name: str, size: int, *, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if directory:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    else:
        info.size = size
        info.mode = 0o755 if name.startswith(("bin/", "usr/bin/")) else 0o644
    return info


class Layout:
    """An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs" / "sha256"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        self.refs: list[Descriptor] = []
        self._ref_names: list[str] = []
        self._write_index()

    def blob_path(self, digest: str) -> Path:
        return self.blob_dir / digest.removeprefix("sha256:")

    def add_blob(self, data: bytes, media_type: str) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blob_path(digest).write_bytes(data)
        return Descriptor(media_type, digest, len(data))

    def add_layer(self, files: Mapping[str, FileContent], *, compresslevel: int = 6) -> Layer:
        """A gzip tar layer holding `files` (path -> content), with entries for their parent
        directories. Use `compresslevel=0` for random content: gzip cannot shrink it anyway,
        and stored blocks are written at disk speed."""
        with tempfile.NamedTemporaryFile(dir=self.blob_dir, prefix=".tmp-", delete=False) as out:
            tmp = Path(out.name)
            compressed = _HashingWriter(out.write)
            with gzip.GzipFile(
                filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=compresslevel
            ) as gz:
                uncompressed = _HashingWriter(gz.write)
                with tarfile.open(
                    fileobj=uncompressed,
                    mode="w|",
                    format=tarfile.PAX_FORMAT,
                ) as tar:
                    for directory in sorted(_parents(files)):
                        tar.addfile(_tar_info(directory, 0, directory=True))
                    for name, content in sorted(files.items()):
                        if isinstance(content, RandomContent):
                            reader = io.BufferedReader(_RandomReader(content), CHUNK)
                            tar.addfile(_tar_info(name, content.size), reader)
                        else:
                            tar.addfile(_tar_info(name, len(content)), io.BytesIO(content))
        descriptor = Descriptor(OCI_LAYER_GZIP, compressed.digest, compressed.size)
        tmp.chmod(0o644)
        tmp.replace(self.blob_path(descriptor.digest))
        return Layer(descriptor, uncompressed.digest)

    def add_image(
        self,
        layers: Sequence[Layer],
        *,
        arch: str = "amd64",
        os_name: str = "linux",
        variant: str | None = None,
        cmd: Sequence[str] = ("/bin/sh",),
        platform_in_descriptor: bool = False,
    ) -> Image:
        """A config (with the layers' diff_ids) and an OCI manifest for `layers`."""
        config: dict[str, Any] = {
            "created": "2024-01-01T00:00:00Z",
            "architecture": arch,
            "os": os_name,
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": list(cmd),
            },
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            "history": [
                {"created": "2024-01-01T00:00:00Z", "created_by": f"generated layer {i}"}
                for i in range(len(layers))
            ],
        }
        if variant:
            config["variant"] = variant
        config_desc = self.add_blob(_json_bytes(config), OCI_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_desc.to_json(),
            "layers": [layer.descriptor.to_json() for layer in layers],
        }
        platform = {"architecture": arch, "os": os_name} | ({"variant": variant} if variant else {})
        manifest_desc = self.add_blob(_json_bytes(manifest), OCI_MANIFEST)
        if platform_in_descriptor:
            manifest_desc = Descriptor(
                manifest_desc.media_type, manifest_desc.digest, manifest_desc.size, platform
            )
        return Image(manifest_desc, config_desc, tuple(layers))

    def add_index(self, images: Sequence[Image]) -> Index:
        """An OCI image index over `images` (each added with `platform_in_descriptor`)."""
        by_platform: dict[str, Image] = {}
        for image in images:
            platform = image.descriptor.platform
            if not platform:
                raise ValueError("an index entry needs a platform")
            key = f"{platform['os']}/{platform['architecture']}"
            if "variant" in platform:
                key += "/" + platform["variant"]
            by_platform[key] = image
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [image.descriptor.to_json() for image in images],
        }
        return Index(self.add_blob(_json_bytes(index), OCI_INDEX), by_platform)

    def tag(self, name: str, descriptor: Descriptor) -> None:
        """Name `descriptor` in index.json, so `oci:<root>:<name>` refers to it."""
        self.refs.append(Descriptor(descriptor.media_type, descriptor.digest, descriptor.size))
        self._ref_names.append(name)
        self._write_index()

    def _write_index(self) -> None:
        manifests = [
            ref.to_json() | {"annotations": {REF_NAME: name}}
            for ref, name in zip(self.refs, self._ref_names, strict=True)
        ]
        (self.root / "index.json").write_bytes(
            _json_bytes({"schemaVersion": 2, "manifests": manifests})
        )


def _parents(files: Mapping[str, FileContent]) -> set[str]:
    parents: set[str] = set()
    for name in files:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parents.add("/".join(parts[:i]))
    return parents


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def random_bytes(size: int, seed: int) -> bytes:
    """Deterministic incompressible bytes (for small layers held in memory)."""
    return random.Random(seed).randbytes(size)
