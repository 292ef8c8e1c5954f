"""The error every upstream failure becomes, and how transport failures and HTTP statuses
map to what a client should see (each naming the upstream), shared by the client and its
guards."""

from __future__ import annotations

import logging

import aiohttp

from mirror import errors
from mirror.errors import ErrorCode, RegistryError

log = logging.getLogger(__name__)


class UpstreamError(RegistryError):
    """The upstream failed to give an answer (network, timeout, 5xx, 429, auth trouble),
    as opposed to an authoritative answer such as 404."""


def transport_fault(name: str, exc: BaseException) -> UpstreamError:
    """Map a transport failure to the status a client should see, naming the upstream."""
    if isinstance(exc, TimeoutError):
        return UpstreamError(errors.UPSTREAM_TIMEOUT, f"upstream {name} timed out")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cause = exc.certificate_error
        reason = getattr(cause, "verify_message", None) or type(cause).__name__
        return UpstreamError(
            errors.UPSTREAM_BAD_GATEWAY,
            f"upstream {name} has a TLS certificate the mirror does not trust "
            f"({reason}): set the upstream's ca_file, or insecure = true for a lab",
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError(
            errors.UPSTREAM_UNAVAILABLE, f"upstream {name} is unreachable: {exc.strerror}"
        )
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamError(
            errors.UPSTREAM_BAD_GATEWAY,
            f"upstream {name} broke off the response body (connection closed or "
            "reset before its end)",
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamError(
            errors.UPSTREAM_BAD_GATEWAY,
            f"upstream {name} closed the connection without answering",
        )
    log.warning("upstream %s failed: %s", name, type(exc).__name__)
    return UpstreamError(
        errors.UPSTREAM_BAD_GATEWAY,
        f"upstream {name} failed: {type(exc).__name__}",
    )


def raise_for_status(name: str, resp: aiohttp.ClientResponse, not_found: ErrorCode) -> None:
    """Return for a 2xx; else raise what the status means for a client (404 is the
    upstream's authoritative answer, the rest upstream failures naming it)."""
    status = resp.status
    if 200 <= status < 300:
        return
    if status == 404:
        raise RegistryError(not_found, f"not found at upstream {name}")
    if status in (401, 403):
        raise UpstreamError(
            errors.DENIED,
            f"upstream {name} denied access: the repository does not exist "
            "or needs credentials the mirror does not have",
        )
    if status == 429:
        headers = {}
        if retry_after := resp.headers.get("Retry-After"):
            headers["Retry-After"] = retry_after
        raise UpstreamError(
            errors.TOOMANYREQUESTS,
            f"upstream {name} is rate limiting the mirror",
            headers=headers,
        )
    raise UpstreamError(errors.UPSTREAM_BAD_GATEWAY, f"upstream {name} answered HTTP {status}")
