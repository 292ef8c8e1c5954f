"""Where content is kept: the `ContentStore` seam and its implementations (the filesystem
one in `mirror.storage.filesystem`)."""

from mirror.storage.protocol import (
    BlobWriter,
    ContentKind,
    ContentStore,
    IntegrityError,
    Spool,
    SpoolProgress,
    SpoolReader,
    StoredBlob,
    StoredManifest,
    StoredObject,
    TempFile,
    Usage,
)

__all__ = [
    "BlobWriter",
    "ContentKind",
    "ContentStore",
    "IntegrityError",
    "Spool",
    "SpoolProgress",
    "SpoolReader",
    "StoredBlob",
    "StoredManifest",
    "StoredObject",
    "TempFile",
    "Usage",
]
