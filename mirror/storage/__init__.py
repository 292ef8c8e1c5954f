"""Where content is kept: the `ContentStore` seam and its implementations (the filesystem
one in `mirror.storage.filesystem`)."""

from mirror.storage.protocol import (
    BlobRedirects,
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
    StoreUnavailable,
    TempFile,
    UploadSpool,
    Usage,
)

__all__ = [
    "BlobRedirects",
    "BlobWriter",
    "ContentKind",
    "ContentStore",
    "IntegrityError",
    "Spool",
    "SpoolProgress",
    "SpoolReader",
    "StoreUnavailable",
    "StoredBlob",
    "StoredManifest",
    "StoredObject",
    "TempFile",
    "UploadSpool",
    "Usage",
]
