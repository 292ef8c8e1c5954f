"""The bundle format's names and limits, and the errors both directions report."""

from __future__ import annotations

from dataclasses import dataclass

from mirror import mediatypes
from mirror.reference import Digest
from mirror.storage import BlobWriter

OCI_LAYOUT = "oci-layout"
INDEX_JSON = "index.json"
TAGS_JSON = "mirror/tags.json"
TAGS_VERSION = 1
REF_NAME = "org.opencontainers.image.ref.name"
# The largest metadata file (index.json, tags.json) and manifest an import reads into memory.
MAX_METADATA_BYTES = 64 * 1024 * 1024
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# The manifest types a tag record may name (the Accept classes are made of these).
KNOWN_TYPES = frozenset(
    {*mediatypes.MANIFEST_TYPES, mediatypes.DOCKER_SCHEMA1, mediatypes.DOCKER_SCHEMA1_SIGNED}
)


class BundleError(Exception):
    """A bundle that cannot be imported; `entry` names the tar entry at fault, if one is."""

    def __init__(self, entry: str | None, message: str) -> None:
        super().__init__(f"{entry}: {message}" if entry else message)
        self.entry = entry


class ExportError(Exception):
    """What keeps an export from writing a complete bundle (one problem a line)."""


def entry_name(digest: Digest) -> str:
    """The tar entry holding a blob or manifest."""
    return f"blobs/{digest.algorithm}/{digest.hex}"


@dataclass(frozen=True)
class Staged:
    """One verified blob entry of a bundle, in the store's writer until it is committed or
    aborted. `data` is its bytes when it may be a manifest (small enough, and JSON): `check`
    reads manifests, and commit publishes them with `write_manifest`."""

    writer: BlobWriter
    size: int
    data: bytes | None = None
