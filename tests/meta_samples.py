"""Sample keys and records for the metadata-store tests: a tag of Docker Hub's alpine under the
OCI accept class, its record, a blob digest, and a TTL short enough to run out in real time."""

from __future__ import annotations

from mirror.meta.store import TagKey, TagRecord
from mirror.reference import Digest

HUB = "registry-1.docker.io"
LOCAL = "localhost:5000"
OCI = "application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json"
DOCKER = "application/vnd.docker.distribution.manifest.v2+json"
KEY = TagKey(HUB, "library/alpine", "3.19", OCI)
RECORD = TagRecord(
    Digest.parse("sha256:" + "a" * 64), "application/vnd.oci.image.index.v1+json", 1234, 1e9
)
DIGEST = "sha256:" + "b" * 64
# A TTL that runs out soon in real time too: Redis expires keys by its own clock.
SHORT_TTL = 0.05
