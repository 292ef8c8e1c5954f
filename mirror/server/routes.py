"""The read side of the Registry HTTP API v2. Routes parse and validate, then delegate to the
caches, or, for a hosted repository, to `mirror.server.hosted` (which also takes its manifest
`PUT`s); every failure is a `RegistryError` that the error middleware renders."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from contextlib import aclosing, nullcontext
from urllib.parse import parse_qsl, urlencode, urlsplit

from aiohttp import web

from mirror import errors, mediatypes, observe
from mirror.cache.access import AccessRecorder
from mirror.cache.blobs import BlobBody, BlobCache
from mirror.cache.manifests import ManifestCache
from mirror.cache.tags import TagLists
from mirror.config import DOCKER_HUB_HOSTS
from mirror.errors import RegistryError
from mirror.meta.store import HostedContent, Links
from mirror.reference import (
    Digest,
    is_digest,
    is_registry_host,
    looks_like_host,
    parse_name,
    parse_tag,
)
from mirror.server import addressing, responses
from mirror.server.auth import CATALOG_FILTER
from mirror.server.coldmisses import ColdMissLimit
from mirror.server.hosted import HostedRoutes, push_refusal
from mirror.server.responses import cached_blob_response
from mirror.storage import BlobRedirects, StoredBlob
from mirror.upstream.hosting import HOSTED, HostedRepo
from mirror.upstream.routing import Router, UpstreamRepo

log = logging.getLogger(__name__)

READ_METHODS = frozenset({"GET", "HEAD"})
# Enough for any real repository; a bigger `n` is refused rather than passed upstream.
MAX_TAGS_PAGE = 10_000
# A catalog page without `n`: the catalog is read from the store a page at a time.
CATALOG_PAGE = 1_000
# How long the presigned URL of a blob redirected to the bucket works (`s3_redirect`): long
# enough to start a transfer (which then runs to its end), short enough that a URL passed
# on is soon worthless.
REDIRECT_EXPIRES_SECONDS = 600

_NAME = "{name:.+}"  # the name may contain "/"; the endpoint suffix anchors the match


class RegistryRoutes:
    """Handlers for `/v2/...`, bound to one set of caches."""

    def __init__(
        self,
        router: Router,
        blobs: BlobCache,
        manifests: ManifestCache,
        tags: TagLists,
        meta: Links,
        cold_misses: ColdMissLimit,
        hosted: HostedRoutes,
        hosted_content: HostedContent,
        access: AccessRecorder,
        *,
        redirects: BlobRedirects | None = None,
    ) -> None:
        self._router = router
        self._blobs = blobs
        self._manifests = manifests
        self._tags = tags
        self._meta = meta
        self._cold_misses = cold_misses
        self._hosted = hosted
        self._hosted_content = hosted_content  # the hosted repositories the catalog lists
        self._access = access  # counts pulls of hosted repositories (the cache counts its own)
        self._redirects = redirects  # blob GETs sent to the bucket (`s3_redirect`)

    def register(self, router: web.UrlDispatcher) -> None:
        """Add the routes, each named for its metrics label (see `middleware.route_label`).
        The routes that need the repository resolved have a `{name}` (`addressing`). The
        upload routes (`mirror.server.uploads`) go first: `blobs/uploads` is no digest."""
        router.add_route("GET", "/v2", self.ping, name="ping.unslashed")
        router.add_route("GET", "/v2/", self.ping, name="ping")
        router.add_route("GET", "/v2/_catalog", self.catalog, name="catalog")
        router.add_route(
            "*", f"/v2/{_NAME}/manifests/{{reference}}", self.manifest, name="manifest"
        )
        router.add_route("*", f"/v2/{_NAME}/blobs/{{digest}}", self.blob, name="blob")
        router.add_route("*", f"/v2/{_NAME}/tags/list", self.tags, name="tags")

    # --- handlers -------------------------------------------------------------------------

    async def ping(self, request: web.Request) -> web.Response:
        if (ns := request.query.get("ns")) is not None:
            self._router.upstream(ns)  # refuse a registry the mirror does not serve
            addressing.routed_by_namespace(request, ns)
        return web.json_response({})

    async def manifest(self, request: web.Request) -> web.StreamResponse:
        if request.method not in READ_METHODS and not self._hosts(request):
            manifest_reference(request)  # a malformed reference: the client's 400 before the 405
        repo = self._resolve(request)
        if isinstance(repo, HostedRepo):
            response = await self._hosted.manifest(request, repo)
            if request.method in READ_METHODS and not is_digest(request.match_info["reference"]):
                self._access.pulled(repo)  # a tag resolved, as a cached pull is counted
            return response
        reference = manifest_reference(request)
        if isinstance(reference, Digest):
            manifest = await self._manifests.by_digest(repo, reference)
            return responses.manifest_response(
                request, manifest.digest, manifest.media_type, len(manifest.data), manifest.data
            )
        tag = reference
        accept = mediatypes.accepted_types(request.headers.getall("Accept", []))
        resolved = await self._manifests.resolve(
            repo, tag, accept, with_bytes=request.method != "HEAD"
        )
        data = resolved.manifest.data if resolved.manifest is not None else None
        response = responses.manifest_response(
            request, resolved.digest, resolved.media_type, resolved.size, data
        )
        if resolved.stale is not None:
            response.headers["Warning"] = stale_warning(resolved.stale)
        return response

    async def blob(self, request: web.Request) -> web.StreamResponse:
        repo = self._resolve(request)
        if isinstance(repo, HostedRepo):
            return await self._hosted.blob(request, repo)
        digest = Digest.parse(request.match_info["digest"])
        if cached := await self._blobs.cached(repo, digest):  # the repository holds it
            if self._redirects is not None and _redirectable(request, digest, cached):
                url = await self._redirects.presigned_get(digest, REDIRECT_EXPIRES_SECONDS)
                return _redirect_response(digest, url)
            return cached_blob_response(request, digest, cached)
        if request.method == "HEAD":
            size = await self._blobs.size(repo, digest)
            response = web.StreamResponse(headers=responses.blob_headers(digest))
            if size is not None:
                response.content_length = size
            return response
        cold = self._blobs.cold(digest)
        with self._cold_misses.hold(request) if cold else nullcontext():
            download = await self._blobs.download(repo, digest)
            return await stream_download(request, download)

    async def tags(self, request: web.Request) -> web.Response:
        repo = self._resolve(request)
        query = pagination(request, parse_tag)
        if isinstance(repo, HostedRepo):
            self._check_read(request)
            wanted = dict(query)
            n = int(wanted["n"]) if "n" in wanted else None
            return await self._hosted.tags(request, repo, n, wanted.get("last", ""))
        name = request.match_info["name"]  # as the client wrote it: Link points back to it
        page = await self._tags.page(repo, query)
        headers = {}
        if page.link and (link := _rewrite_link(page.link, name, request.query.get("ns"))):
            headers["Link"] = link
        if page.stale is not None:
            headers["Warning"] = stale_warning(page.stale)
        return web.Response(body=page.body, content_type="application/json", headers=headers)

    async def catalog(self, request: web.Request) -> web.Response:
        """The repositories this mirror holds content for (links, not the upstreams'
        catalogs) and the hosted ones with a tag: with `ns`, that registry's; else all of
        them, named as they are pulled through the mirror (`library/alpine` for docker.io,
        `ghcr.io/org/app` for the others, `local/app` as hosted). One page (`n`, default
        `CATALOG_PAGE`, after `last`), read from the store a page at a time per upstream
        and for the hosted ones, with a `Link` to the next."""
        query = dict(pagination(request, _catalog_name))
        n = int(query.get("n", CATALOG_PAGE))
        last = query.get("last", "")
        visible = request.get(CATALOG_FILTER, lambda host, name: True)  # the user's, if any
        ns = request.query.get("ns")
        upstreams = self._router.upstreams
        if ns is not None:
            upstreams = (self._router.upstream(ns),)
            addressing.routed_by_namespace(request, ns)
        repos: list[str] = []
        for upstream in upstreams:
            prefix = "" if ns is not None or upstream is self._router.default else upstream.host
            repos += await self._catalog_page(upstream.host, prefix, last, n + 1, visible)
        repos += await self._hosted_page(ns, last, n + 1, visible)
        repos = sorted(set(repos))  # a hosted name may have been cached before it was hosted
        headers = {}
        if len(repos) > n > 0:
            more = urlencode({"n": n, "last": repos[n - 1]})
            headers["Link"] = f'</v2/_catalog?{more}>; rel="next"'
        return web.json_response({"repositories": repos[:n]}, headers=headers)

    async def _catalog_page(
        self,
        host: str,
        prefix: str,
        last: str,
        wanted: int,
        visible: Callable[[str, str], bool],
    ) -> list[str]:
        """Up to `wanted` of `host`'s repositories the user may see, named `prefix/name`
        (or `name`), the first ones after `last` in that naming."""
        after = _after(prefix, last)
        if after is None:
            return []
        found: list[str] = []
        while len(found) < wanted:
            names = await self._meta.list_repositories(host, last=after, n=wanted)
            found += [name for name in names if visible(host, name)]
            if len(names) < wanted:
                break
            after = names[-1]
        return [f"{prefix}/{name}" if prefix else name for name in found[:wanted]]

    async def _hosted_page(
        self, ns: str | None, last: str, wanted: int, visible: Callable[[str, str], bool]
    ) -> list[str]:
        """Up to `wanted` of the hosted repositories the user may see, the first ones after
        `last`, named as they are addressed: as hosted without `ns`; with `ns=docker.io`,
        those with no host of their own; with another `ns`, those under that host, without it."""
        host = None if ns is None or ns.lower() in DOCKER_HUB_HOSTS else ns.lower()
        prefix = f"{host}/" if host is not None else ""
        found: list[str] = []
        after = prefix + last if prefix else last
        while len(found) < wanted:
            names = await self._hosted_content.hosted_repositories(last=after, n=wanted)
            for name in names:
                shown = _hosted_name(name, ns, prefix)
                if shown is not None and visible(HOSTED, name):
                    found.append(shown)
            if len(names) < wanted or (prefix and not names[-1].startswith(prefix)):
                break
            after = names[-1]
        return found[:wanted]

    # --- validation -----------------------------------------------------------------------

    def _check_read(self, request: web.Request) -> None:
        if request.method not in READ_METHODS:
            raise push_refusal(self._router.hosting.patterns)

    @staticmethod
    def _hosts(request: web.Request) -> bool:
        """Whether the request addresses a hosted repository (which takes writes)."""
        return isinstance(addressing.served_target(request), HostedRepo)

    def _resolve(self, request: web.Request) -> UpstreamRepo | HostedRepo:
        """The repository the request addresses: a hosted one as it is (its handler checks
        the method), else an upstream one, for reads only."""
        if isinstance(hosted := addressing.served_target(request), HostedRepo):
            observe.routed(HOSTED)  # the access log's `upstream=hosted`
            return hosted
        self._check_read(request)
        repo = addressing.target(request)
        if isinstance(repo, UpstreamRepo):
            observe.routed(repo.upstream.host)
        return repo


def _after(prefix: str, last: str) -> str | None:
    """The store's `last` for an upstream whose names the catalog shows as `prefix/name`,
    given the catalog's `last`: None when every one of them sorts before it."""
    if not prefix:
        return last
    if last.startswith(prefix + "/"):
        return last[len(prefix) + 1 :]
    return "" if prefix + "/" > last else None


def _hosted_name(name: str, ns: str | None, prefix: str) -> str | None:
    """Hosted `name` as a catalog routed by `ns` shows it; None when it is not that
    registry's."""
    if ns is None:
        return name
    if prefix:
        return name[len(prefix) :] if name.startswith(prefix) else None
    first, sep, _ = name.partition("/")
    return None if sep and looks_like_host(first) else name


def _catalog_name(name: str) -> str:
    """A catalog entry: a repository name, perhaps behind a registry host."""
    first, sep, rest = name.partition("/")
    if sep and looks_like_host(first):
        if not is_registry_host(first):
            raise RegistryError(errors.NAME_INVALID, "invalid registry host in `last`")
        return f"{first}/{parse_name(rest)}"
    return parse_name(name)


def manifest_reference(request: web.Request) -> Digest | str:
    """The manifest route's reference: a digest or a tag.

    A read of anything else answers 404 MANIFEST_UNKNOWN: the spec gives `GET`/`HEAD` of a
    manifest no failure but 404, and a reference that is no tag and no digest names nothing
    (distribution routes it nowhere; the conformance suite reads `.INVALID_MANIFEST_NAME`).
    A write or delete of one is a bad request, answered 400 (DIGEST_INVALID, TAG_INVALID)
    before whether the repository takes writes at all: that is the client's mistake either way.
    """
    reference = request.match_info["reference"]
    try:
        return _parse_reference(reference)
    except RegistryError as exc:
        if request.method not in READ_METHODS:
            raise
        raise RegistryError(
            errors.MANIFEST_UNKNOWN,
            f"manifest unknown: the reference is neither a tag nor a digest ({exc.message})",
            detail={"reference": reference[:200]},
        ) from None


@functools.lru_cache(maxsize=1024)
def _parse_reference(reference: str) -> Digest | str:
    """Parsed once per reference (clients ask for the same few over and over; a refusal
    is raised anew each time)."""
    return Digest.parse(reference) if is_digest(reference) else parse_tag(reference)


def _redirectable(request: web.Request, digest: Digest, blob: StoredBlob) -> bool:
    """Whether a GET of a stored blob goes to the bucket: every GET of a blob read from
    there, ranges included (the bucket honours them, and clients send the header again
    to the new location). Not a HEAD, not a conditional GET the mirror answers 304, and
    not a blob in this host's hot cache: sent from its disk, it costs the bucket nothing
    and is served even while the bucket is unreachable."""
    return (
        request.method == "GET"
        and blob.local_path is None
        and not responses.etag_matches(request, digest)
    )


def _redirect_response(digest: Digest, url: str) -> web.Response:
    """307: the client GETs the presigned URL instead (same method, its Range kept). Not
    to be cached: the URL expires."""
    headers = {
        "Location": url,
        "Docker-Content-Digest": str(digest),
        "Cache-Control": "no-store",
    }
    return web.Response(status=307, headers=headers)


async def stream_download(request: web.Request, download: BlobBody) -> web.StreamResponse:
    """Stream a blob that is still arriving from upstream; abort the connection if the
    download fails, so the client never mistakes a partial or bad body for a good one."""
    try:
        return await _stream_body(request, download)
    finally:
        await download.release()


async def _stream_body(request: web.Request, download: BlobBody) -> web.StreamResponse:
    size = download.size
    headers = responses.blob_headers(download.digest)
    start, end, status = 0, None, 200
    if size is not None:
        rng = responses.parse_range(request.headers.get("Range"), size)
        if rng is not None:
            start, end, status = rng.start, rng.end, 206
            headers["Content-Range"] = rng.content_range(size)
    response = web.StreamResponse(status=status, headers=headers)
    if size is not None:
        response.content_length = (end if end is not None else size) - start
    else:
        response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        async with aclosing(download.read(start, end)) as chunks:
            async for chunk in chunks:
                await response.write(chunk)
                observe.served_bytes(len(chunk), from_cache=False)
    except RegistryError as exc:
        log.warning("aborting client of %s: %s", download.digest, exc)
        observe.aborted()
        responses.abort(request)
        return response
    await response.write_eof()
    return response


def pagination(request: web.Request, parse_last: Callable[[str], str]) -> list[tuple[str, str]]:
    """Validated `n` and `last` query parameters, in that order."""
    query: list[tuple[str, str]] = []
    if (n := request.query.get("n")) is not None:
        # ASCII digits only ("²".isdigit() is true, but int() refuses it), and the length
        # checked before int(), which refuses strings of more than 4300 digits.
        digits = n.lstrip("0") or "0"
        if (
            not (n.isascii() and n.isdigit())
            or len(digits) > len(str(MAX_TAGS_PAGE))
            or int(digits) > MAX_TAGS_PAGE
        ):
            raise RegistryError(
                errors.PAGINATION_NUMBER_INVALID,
                f"n must be an integer from 0 to {MAX_TAGS_PAGE}",
            )
        query.append(("n", digits))
    if (last := request.query.get("last")) is not None:
        query.append(("last", parse_last(last)))
    return query


def stale_warning(reason: str) -> str:
    """An RFC 7234 `Warning: 110` ("Response is Stale") with the reason, header-safe."""
    return f'110 - "Response is Stale: {responses.header_safe(reason, 300)}"'


def _rewrite_link(link: str, name: str, ns: str | None) -> str | None:
    """Point the upstream's pagination `Link` at the mirror: its own path for the name the
    client used, only `n` and `last` kept, and `ns` added back (distribution drops it)."""
    target = link.split(";", 1)[0].strip().strip("<>")
    kept = [(k, v) for k, v in parse_qsl(urlsplit(target).query) if k in ("n", "last")]
    if not kept:
        return None
    if ns is not None:
        kept.append(("ns", ns))
    return f'</v2/{name}/tags/list?{urlencode(kept)}>; rel="next"'
