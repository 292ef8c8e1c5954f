"""The manifest, blob and tag-list endpoints of hosted repositories: reads from the store,
manifest `PUT`s and deletes (202, as the spec answers them). `RegistryRoutes` hands a
request here once its repository resolved to a hosted one; uploads are
`mirror.server.uploads`."""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from mirror import errors
from mirror.cache.hosted import HostedRepositories
from mirror.errors import RegistryError
from mirror.reference import Digest
from mirror.server import responses
from mirror.upstream.hosting import HostedRepo

READS = frozenset({"GET", "HEAD"})
_BODY_CHUNK = 1 << 16


def push_refusal(patterns: tuple[str, ...]) -> RegistryError:
    """405 UNSUPPORTED for a write to a repository the mirror does not host, naming the
    ones it does."""
    hosted = (
        "pushes go to the hosted repositories: " + ", ".join(patterns)
        if patterns
        else "no repository is hosted (see the `hosted` setting)"
    )
    return RegistryError(
        errors.UNSUPPORTED,
        f"this repository is read-only: the mirror pulls it through from upstream; {hosted}",
    )


class HostedRoutes:
    """Handlers for a hosted repository's manifests, blobs and tags."""

    def __init__(self, hosted: HostedRepositories) -> None:
        self._hosted = hosted

    async def manifest(self, request: web.Request, repo: HostedRepo) -> web.StreamResponse:
        reference = request.match_info["reference"]
        if request.method == "PUT":
            return await self._put_manifest(request, repo, reference)
        if request.method == "DELETE":
            await self._hosted.delete_manifest(repo, reference)
            return web.Response(status=202)
        if request.method not in READS:
            raise _unsupported(request.method)
        manifest = await self._hosted.manifest(repo, reference)
        return responses.manifest_response(
            request, manifest.digest, manifest.media_type, len(manifest.data), manifest.data
        )

    async def blob(self, request: web.Request, repo: HostedRepo) -> web.StreamResponse:
        digest = Digest.parse(request.match_info["digest"])
        if request.method == "DELETE":
            await self._hosted.delete_blob(repo, digest)
            return web.Response(status=202)
        if request.method not in READS:
            raise _unsupported(request.method)
        blob = await self._hosted.blob(repo, digest, touch=request.method == "HEAD")
        return responses.cached_blob_response(request, digest, blob)

    async def tags(
        self, request: web.Request, repo: HostedRepo, n: int | None, last: str
    ) -> web.Response:
        """A page of tags (`n` after `last`), with a `Link` to the next when there is one."""
        found = await self._hosted.tags(repo, last=last, n=None if n is None else n + 1)
        page = found if n is None else found[:n]
        headers = {}
        if n is not None and len(found) > n and page:
            query = [("n", str(n)), ("last", page[-1])]
            if (ns := request.query.get("ns")) is not None:
                query.append(("ns", ns))
            name = request.match_info["name"]
            headers["Link"] = f'</v2/{name}/tags/list?{urlencode(query)}>; rel="next"'
        return web.json_response({"name": repo.name, "tags": page}, headers=headers)

    async def _put_manifest(
        self, request: web.Request, repo: HostedRepo, reference: str
    ) -> web.Response:
        data = await _read_limited(request, self._hosted.max_manifest_size)
        content_type = request.headers.get("Content-Type", "")
        pushed = await self._hosted.put_manifest(repo, reference, content_type, data)
        name = request.match_info["name"]
        headers = {
            "Location": f"/v2/{name}/manifests/{pushed.digest}",
            "Docker-Content-Digest": str(pushed.digest),
        }
        if pushed.subject is not None:
            headers["OCI-Subject"] = str(pushed.subject)
        return web.Response(status=201, headers=headers)


async def _read_limited(request: web.Request, limit: int) -> bytes:
    """The body, read in chunks up to `limit` bytes (aiohttp's own `client_max_size` is
    1 MiB, below the 4 MiB the spec asks registries to accept); 413 beyond it, without
    reading the rest."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.content.iter_chunked(_BODY_CHUNK):
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def _unsupported(method: str) -> RegistryError:
    return RegistryError(errors.UNSUPPORTED, f"{method} is not supported here")


def _too_large(limit: int) -> RegistryError:
    return RegistryError(errors.MANIFEST_TOO_LARGE, f"manifests are limited to {limit} bytes")
