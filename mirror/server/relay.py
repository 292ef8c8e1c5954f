"""The replica-to-replica endpoint, `GET /_mirror/cluster/blobs/<digest>`: another replica
relays a blob this one is downloading (see `mirror.cache.cluster`).

It answers only requests signed with the cluster secret (`mirror.upstream.peers`); anyone
else gets the `404` of an endpoint that does not exist. It is no client route: no client
authentication, repository scope or cold-miss limit applies, and it never starts a download.
It streams this host's download in flight exactly as a client would get it (the last byte
held back until the blob is verified and committed, the connection cut if it fails), or the
committed blob, with `Range` honoured; `404` when this host has neither.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web

from mirror import errors
from mirror.cache.blobs import BlobCache
from mirror.cache.download import Reader
from mirror.errors import RegistryError
from mirror.reference import Digest
from mirror.server.responses import cached_blob_response
from mirror.server.routes import stream_download
from mirror.upstream import peers
from mirror.upstream.peers import RELAY_PREFIX


class RelayRoutes:
    """The endpoint over this process's blobs; `secret` None: there is no cluster, and the
    endpoint answers nobody."""

    def __init__(
        self, blobs: BlobCache, secret: str | None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._blobs = blobs
        self._secret = secret
        self._clock = clock

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_route("GET", RELAY_PREFIX + "{digest}", self.blob, name="cluster")

    async def blob(self, request: web.Request) -> web.StreamResponse:
        if self._secret is None or not peers.verify(
            self._secret, request.method, request.path, request.headers, self._clock()
        ):
            raise _not_found()
        digest = Digest.parse(request.match_info["digest"])
        found = await self._blobs.relay(digest)
        if found is None:
            raise RegistryError(errors.BLOB_UNKNOWN, f"this replica has no {digest}")
        if isinstance(found, Reader):
            return await stream_download(request, found)
        return cached_blob_response(request, digest, found)


def _not_found() -> RegistryError:
    return RegistryError(errors.NOT_FOUND, "no such endpoint")
