"""The registry error catalogue: every error a client can see, with its code and HTTP status.

Routes raise `RegistryError`; the error middleware turns it into the spec's JSON body
(`{"errors": [{"code", "message", "detail"}]}`), so no handler builds error responses by hand.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ErrorCode:
    """A registry error code and the HTTP status distribution gives it."""

    code: str
    status: int
    default_message: str


BLOB_UNKNOWN = ErrorCode("BLOB_UNKNOWN", 404, "blob unknown to registry")
MANIFEST_UNKNOWN = ErrorCode("MANIFEST_UNKNOWN", 404, "manifest unknown")
NAME_UNKNOWN = ErrorCode("NAME_UNKNOWN", 404, "repository name not known to registry")
NOT_FOUND = ErrorCode("NOT_FOUND", 404, "no such endpoint")
NAME_INVALID = ErrorCode("NAME_INVALID", 400, "invalid repository name")
TAG_INVALID = ErrorCode("TAG_INVALID", 400, "invalid tag")
DIGEST_INVALID = ErrorCode("DIGEST_INVALID", 400, "invalid digest")
PAGINATION_NUMBER_INVALID = ErrorCode("PAGINATION_NUMBER_INVALID", 400, "invalid number of results")
RANGE_NOT_SATISFIABLE = ErrorCode("RANGE_INVALID", 416, "requested range not satisfiable")
UNAUTHORIZED = ErrorCode("UNAUTHORIZED", 401, "authentication required")
DENIED = ErrorCode("DENIED", 403, "requested access to the resource is denied")
UNSUPPORTED = ErrorCode("UNSUPPORTED", 405, "the operation is unsupported")
TOOMANYREQUESTS = ErrorCode("TOOMANYREQUESTS", 429, "too many requests")
# Pushes into hosted repositories (distribution's statuses).
BLOB_UPLOAD_UNKNOWN = ErrorCode("BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry")
SIZE_INVALID = ErrorCode("SIZE_INVALID", 400, "provided length did not match content length")
MANIFEST_INVALID = ErrorCode("MANIFEST_INVALID", 400, "manifest invalid")
MANIFEST_BLOB_UNKNOWN = ErrorCode(
    "MANIFEST_BLOB_UNKNOWN", 400, "manifest references an unknown blob"
)
# The spec says a manifest above the size limit SHOULD get 413; it names no code for it.
MANIFEST_TOO_LARGE = ErrorCode("SIZE_INVALID", 413, "manifest too large")
# The metadata store holding hosted repositories' records failed: nothing to answer from.
STORE_UNAVAILABLE = ErrorCode("UNAVAILABLE", 503, "metadata store unavailable")
# Upstream faults. The spec has no codes for gateway errors; distribution uses UNAVAILABLE.
UPSTREAM_BAD_GATEWAY = ErrorCode("UNAVAILABLE", 502, "upstream registry failed")
UPSTREAM_UNAVAILABLE = ErrorCode("UNAVAILABLE", 503, "upstream registry unreachable")
UPSTREAM_TIMEOUT = ErrorCode("UNAVAILABLE", 504, "upstream registry timed out")
INTERNAL = ErrorCode("UNKNOWN", 500, "internal error")


@dataclass
class RegistryError(Exception):
    """An error that is answered to the client with the spec's JSON error body."""

    error: ErrorCode
    message: str = ""
    detail: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message or self.error.default_message)

    @property
    def status(self) -> int:
        return self.error.status

    def body(self) -> bytes:
        entry: dict[str, Any] = {
            "code": self.error.code,
            "message": self.message or self.error.default_message,
        }
        if self.detail is not None:
            entry["detail"] = self.detail
        return json.dumps({"errors": [entry]}).encode()
