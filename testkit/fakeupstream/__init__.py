"""Fake Docker Hub (registry + token server + CDN) and generated images for mirror tests."""

from .faults import CHUNK_SIZE, Fault
from .gates import BodyGate
from .images import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_MEDIA_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    Blob,
    Manifest,
    make_image,
    make_index,
    make_layer,
    make_referrer,
    random_layer,
    sha256_digest,
)
from .recording import RecordedRequest
from .registry import FakeRegistry
from .tokens import SERVICE

__all__ = [
    "CHUNK_SIZE",
    "DOCKER_CONFIG",
    "DOCKER_LAYER",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "INDEX_MEDIA_TYPES",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_MANIFEST",
    "SERVICE",
    "Blob",
    "BodyGate",
    "FakeRegistry",
    "Fault",
    "Manifest",
    "RecordedRequest",
    "make_image",
    "make_index",
    "make_layer",
    "make_referrer",
    "random_layer",
    "sha256_digest",
]
