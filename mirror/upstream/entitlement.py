"""Per-client entitlement on a passthrough upstream: whether the upstream lets this client
(its own credential) pull from this repository, asked before anything of the repository is
served to it, cached or not.

Content is stored once for all clients, so a cached object of a private repository must
not reach a client the upstream would refuse. The upstream decides: a `HEAD` of the object
with the client's token; its acceptance is remembered per (credential, upstream,
repository) for the upstream's `passthrough_ttl`, keyed by the credential's keyed hash. A
refusal is the upstream's own answer (401, 403 or 404) and is not remembered, so a client
granted access a moment later is let in at once.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from mirror import errors, observe
from mirror.errors import ErrorCode, RegistryError
from mirror.singleflight import SingleFlight
from mirror.upstream.client import UpstreamError
from mirror.upstream.routing import UpstreamRepo

# Acceptances remembered at most (least recently used go first): bounded whatever clients send.
MAX_ENTITLEMENTS = 4096
_NOT_FOUND: dict[str, ErrorCode] = {
    "manifest": errors.MANIFEST_UNKNOWN,
    "blob": errors.BLOB_UNKNOWN,
    "tags": errors.NAME_UNKNOWN,
}

_Key = tuple[str, str, str]  # (credential key, upstream host, repository)


class Entitlements:
    """Remembers which clients the upstreams accepted for which repositories, lately."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, max_entries: int = MAX_ENTITLEMENTS
    ) -> None:
        self._clock = clock
        self._max = max_entries
        self._until: OrderedDict[_Key, float] = OrderedDict()
        self._checks: SingleFlight[tuple[_Key, str, str], int] = SingleFlight()

    def __len__(self) -> int:
        return len(self._until)

    async def check(self, repo: UpstreamRepo, kind: observe.UpstreamKind, reference: str) -> None:
        """Return when the upstream accepts `repo.credential` for `repo`; else raise the
        upstream's refusal (401, 403 or 404) or its failure."""
        credential = repo.credential
        assert credential is not None, "only for a request bound to a client's credential"
        key = (credential.key, repo.upstream.host, repo.name)
        until = self._until.get(key)
        if until is not None and until > self._clock():
            self._until.move_to_end(key)
            return
        self._until.pop(key, None)
        status = await self._checks.run(
            (key, kind, reference),
            lambda: repo.upstream.accepts(repo.name, kind, reference, credential),
        )
        if 200 <= status < 400:
            self._remember(key, repo.upstream.passthrough_ttl)
            return
        raise _refusal(repo, kind, status)

    def _remember(self, key: _Key, ttl: float) -> None:
        self._until[key] = self._clock() + ttl
        self._until.move_to_end(key)
        while len(self._until) > self._max:
            self._until.popitem(last=False)


def _refusal(repo: UpstreamRepo, kind: str, status: int) -> RegistryError:
    where = f"upstream {repo.upstream.name}"
    if status == 401:
        return RegistryError(
            errors.UNAUTHORIZED, f"{where} did not accept your credentials for {repo.name}"
        )
    if status == 403:
        return RegistryError(errors.DENIED, f"{where} denies you access to {repo.name}")
    if status == 404:
        return RegistryError(_NOT_FOUND[kind], f"not found at {where}")
    if status == 429:
        return UpstreamError(errors.TOOMANYREQUESTS, f"{where} is rate limiting the mirror")
    return UpstreamError(errors.UPSTREAM_BAD_GATEWAY, f"{where} answered HTTP {status}")
