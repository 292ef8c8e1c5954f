"""The error every upstream failure becomes, shared by the client and its guards."""

from __future__ import annotations

from mirror.errors import RegistryError


class UpstreamError(RegistryError):
    """The upstream failed to give an answer (network, timeout, 5xx, 429, auth trouble),
    as opposed to an authoritative answer such as 404."""
