"""The client for one upstream registry: two long-lived connection pools (blob bodies, and
everything else), challenge-driven auth, hand-followed redirects that cannot reach the
mirror's own networks, timeouts, a negative cache for 404s, a circuit breaker, and upstream
faults mapped to clean registry errors.

Everything the mirror asks an upstream goes through `UpstreamClient`; callers get parsed
answers or a `RegistryError` and never see aiohttp exceptions.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict

from mirror import errors, observe
from mirror.config import UpstreamSettings
from mirror.errors import ErrorCode, RegistryError
from mirror.mediatypes import MANIFEST_TYPES, accept_header, bare_type, is_manifest_type
from mirror.observe import PoolName
from mirror.ratelimit import RateLimit, parse_ratelimit
from mirror.reference import Digest
from mirror.upstream.addresses import AddressRefused, GuardedResolver
from mirror.upstream.auth import Authenticator, TokenError
from mirror.upstream.bodies import BodyTooLarge, read_capped
from mirror.upstream.breaker import CircuitBreaker
from mirror.upstream.credentials import ClientCredential
from mirror.upstream.failures import UpstreamError, raise_for_status, transport_fault
from mirror.upstream.foreign import ForeignAuth, Origin, origin_of, scope_for
from mirror.upstream.lists import ListAnswer, ListCache
from mirror.upstream.negative import Key, NegativeCache
from mirror.upstream.options import ClientOptions
from mirror.upstream.pools import Attempt, Pool
from mirror.upstream.redirects import REDIRECTS, redirect_target

log = logging.getLogger(__name__)

# distribution refuses manifests over 4 MiB; so does the mirror, to bound memory.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_TAGS_BYTES = 16 * 1024 * 1024
# How much of a blob body is buffered before the connection waits for it to be consumed
# (twice this, in aiohttp): room for what arrives while the download hands a write over
# (aiohttp's 64 KiB would stop the connection after every read from the socket).
BLOB_READ_BUFFER = 256 * 1024
# A referrers index is read as a manifest is: one page of it at most this big.
MAX_REFERRERS_BYTES = MAX_MANIFEST_BYTES
# What an upstream without the referrers API answers (ggcr and oras-go read these so):
# clients, and the mirror, then use the fallback tag.
_NO_REFERRERS_API = frozenset({400, 404, 405, 406})
_NOT_FOUND: Mapping[observe.UpstreamKind, ErrorCode] = {
    "manifest": errors.MANIFEST_UNKNOWN,
    "blob": errors.BLOB_UNKNOWN,
}
# Failures that say the upstream cannot be reached at all (what the circuit breaker counts);
# any HTTP answer, whatever its status, says it can.
_CONNECTION_FAILURES = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


@dataclass(frozen=True)
class ManifestHead:
    digest: Digest
    media_type: str
    size: int


@dataclass(frozen=True)
class FetchedManifest:
    data: bytes
    media_type: str
    digest: Digest  # of `data`, computed here
    claimed: Digest | None  # what the upstream's Docker-Content-Digest said, if anything


@dataclass
class BlobStream:
    """An open blob body. `size` is the whole blob's (None when not sent); the chunks are
    the bytes from `start` on (a range asked for and granted, else 0)."""

    size: int | None
    chunks: AsyncIterator[bytes]
    start: int = 0


class UpstreamClient:
    """Talks to one upstream registry. Create inside the event loop; `close()` at shutdown."""

    def __init__(
        self,
        settings: UpstreamSettings,
        options: ClientOptions | None = None,
        *,
        lists: ListCache | None = None,
    ) -> None:
        """`lists` keeps the upstream's tag lists and referrers (None: every one is asked
        for)."""
        options = options if options is not None else ClientOptions()
        self.url = settings.url.rstrip("/")
        #: The registry this upstream stands for (`docker.io`): what keys its cache records.
        self.host = settings.host
        self.library_prefix = settings.library_prefix
        #: Whether clients' own credentials are used here (and for how long an acceptance
        #: of them for a repository is trusted), not the mirror's.
        self.passthrough = settings.passthrough
        self.passthrough_ttl = settings.passthrough_ttl
        parts = urlsplit(self.url)
        self.name = parts.netloc  # used in every message; never includes credentials
        self._origin = origin_of(self.url)
        self._request_timeout = options.request_timeout
        #: The latest rate-limit budget the upstream announced (Docker Hub), if any.
        self.ratelimit: RateLimit | None = None
        self._resolver = GuardedResolver(parts.hostname or "", options.resolver)
        self._metadata = self._pool("metadata", settings, options, options.metadata_connections)
        self._blobs = self._pool(
            "blob", settings, options, options.blob_connections, read_bufsize=BLOB_READ_BUFFER
        )
        self._negative = NegativeCache(options.negative_ttl, clock=options.clock)
        self._lists = lists
        self.breaker = CircuitBreaker(self.host, self.name, options.breaker, clock=options.clock)
        self._auth = Authenticator(
            self._metadata.session,
            upstream=self.host,
            upstream_url=self.url,
            username=settings.username,
            password=settings.password,
            token_hosts=settings.token_hosts,
        )
        self._foreign = ForeignAuth(self._metadata.session, upstream=self.host)

    def _pool(
        self,
        name: PoolName,
        settings: UpstreamSettings,
        options: ClientOptions,
        size: int,
        *,
        read_bufsize: int = 2**16,  # aiohttp's default
    ) -> Pool:
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=options.connect_timeout, sock_read=options.read_timeout
        )
        # No connector limit: the pool's slots bound its requests (a request's token fetch
        # may need a connection besides its own, which a shared limit could deadlock on).
        connector = aiohttp.TCPConnector(
            limit=0, ssl=settings.ssl_context(), resolver=self._resolver
        )
        return Pool(
            name,
            upstream=self.host,
            label=self.name,
            size=size,
            wait=options.pool_timeout,
            connector=connector,
            timeout=timeout,
            read_bufsize=read_bufsize,
        )

    async def close(self) -> None:
        await self._metadata.close()
        await self._blobs.close()
        await self._resolver.close()

    # --- manifests ------------------------------------------------------------------------

    async def head_manifest(
        self, repo: str, reference: str, accept: str, *, credential: ClientCredential | None = None
    ) -> ManifestHead | None:
        """Resolve a reference with HEAD (free on Docker Hub). None when the upstream's HEAD
        cannot tell (405, or no digest, length or type), so the caller falls back to GET."""
        path = f"/v2/{repo}/manifests/{reference}"
        headers = {"Accept": accept}
        missing = ("manifest", repo, reference)
        async with self._request(
            "HEAD", path, repo, "manifest", missing=missing, headers=headers, credential=credential
        ) as resp:
            if resp.status == 405:
                return None
            raise_for_status(self.name, resp, errors.MANIFEST_UNKNOWN)
            digest = _parse_digest(resp.headers.get("Docker-Content-Digest"))
            length = resp.headers.get("Content-Length", "")
            media_type = bare_type(resp.headers.get("Content-Type", ""))
            if digest is None or not length.isdigit() or not is_manifest_type(media_type):
                return None  # a type off the allow-list: the GET refuses it, with reasons
            return ManifestHead(digest=digest, media_type=media_type, size=int(length))

    async def get_manifest(
        self,
        repo: str,
        reference: str,
        accept: str,
        *,
        algorithm: str | None = None,
        credential: ClientCredential | None = None,
    ) -> FetchedManifest:
        """GET a manifest and hash it with `algorithm` (default: the one the upstream's
        digest header uses, else sha256); the caller checks the digest it expected."""
        path = f"/v2/{repo}/manifests/{reference}"
        headers = {"Accept": accept}
        missing = ("manifest", repo, reference)
        async with self._request(
            "GET", path, repo, "manifest", missing=missing, headers=headers, credential=credential
        ) as resp:
            raise_for_status(self.name, resp, errors.MANIFEST_UNKNOWN)
            data = await self._read_capped(resp, MAX_MANIFEST_BYTES, "manifest")
            observe.upstream_received(self.host, len(data))
            media_type = bare_type(resp.headers.get("Content-Type", ""))
            claimed = _parse_digest(resp.headers.get("Docker-Content-Digest"))
        if algorithm is None:
            algorithm = claimed.algorithm if claimed is not None else "sha256"
        digest = Digest(algorithm, hashlib.new(algorithm, data).hexdigest())
        return FetchedManifest(data=data, media_type=media_type, digest=digest, claimed=claimed)

    # --- blobs ----------------------------------------------------------------------------

    async def head_blob(
        self, repo: str, digest: Digest, *, credential: ClientCredential | None = None
    ) -> int | None:
        """The blob's size from an upstream HEAD (no download); None if not given."""
        path, missing = f"/v2/{repo}/blobs/{digest}", ("blob", repo, str(digest))
        async with self._request(
            "HEAD", path, repo, "blob", missing=missing, credential=credential
        ) as resp:
            raise_for_status(self.name, resp, errors.BLOB_UNKNOWN)
            length = resp.headers.get("Content-Length")
            return int(length) if length is not None and length.isdigit() else None

    @asynccontextmanager
    async def open_blob(
        self,
        repo: str,
        digest: Digest,
        *,
        credential: ClientCredential | None = None,
        offset: int = 0,
    ) -> AsyncIterator[BlobStream]:
        """Open the blob body, following redirects to CDN storage (without our credentials).
        From `offset` on when the upstream grants the range (a download taken over from
        another replica), else from the start: the stream's `start` says which."""
        path, missing = f"/v2/{repo}/blobs/{digest}", ("blob", repo, str(digest))
        headers = {"Range": f"bytes={offset}-"} if offset else None
        async with self._request(
            "GET",
            path,
            repo,
            "blob",
            pool=self._blobs,
            missing=missing,
            headers=headers,
            credential=credential,
        ) as resp:
            raise_for_status(self.name, resp, errors.BLOB_UNKNOWN)
            # Whatever has arrived, as soon as it has: waiting to fill a fixed-size chunk
            # would delay every client's first byte.
            chunks = resp.content.iter_any()
            if resp.status == 206 and (granted := content_range(resp.headers)) is not None:
                start, size = granted
                yield BlobStream(size=size, chunks=chunks, start=start)
            else:
                yield BlobStream(size=resp.content_length, chunks=chunks)

    # --- tags -----------------------------------------------------------------------------

    async def get_tags(
        self,
        repo: str,
        query: Sequence[tuple[str, str]],
        *,
        credential: ClientCredential | None = None,
    ) -> ListAnswer:
        """One page of the repository's tag list as the upstream sends it: from the list
        cache while fresh, else asked for (and served stale if that fails)."""
        path = f"/v2/{repo}/tags/list"
        fetch = partial(self._fetch_tags, path, repo, query, credential)
        return await self._kept(path, query, credential, fetch)

    async def _fetch_tags(
        self,
        path: str,
        repo: str,
        query: Sequence[tuple[str, str]],
        credential: ClientCredential | None,
    ) -> ListAnswer:
        async with self._request(
            "GET", path, repo, "tags", params=query, credential=credential
        ) as resp:
            raise_for_status(self.name, resp, errors.NAME_UNKNOWN)
            body = await self._read_capped(resp, MAX_TAGS_BYTES, "tag list")
            return ListAnswer(body=body, link=resp.headers.get("Link"))

    # --- referrers ------------------------------------------------------------------------

    async def get_referrers(
        self,
        repo: str,
        subject: Digest,
        query: Sequence[tuple[str, str]],
        *,
        credential: ClientCredential | None = None,
    ) -> ListAnswer:
        """One page of the upstream's referrers of `subject` as it sends it (`query`: the
        one its previous page's `Link` named), from the list cache while fresh, else asked
        for (and served stale if that fails). Status 404 when the upstream has no referrers
        API (it answered 400, 404, 405 or 406)."""
        path = f"/v2/{repo}/referrers/{subject}"
        fetch = partial(self._fetch_referrers, path, repo, query, credential)
        return await self._kept(path, query, credential, fetch)

    async def _kept(
        self,
        path: str,
        query: Sequence[tuple[str, str]],
        credential: ClientCredential | None,
        fetch: Callable[[], Awaitable[ListAnswer]],
    ) -> ListAnswer:
        """A small mutable list (a tag list page, a referrers index) through the list cache,
        keyed by upstream, URL, query and whose credential asked; `fetch` asks the upstream."""
        if self._lists is None:
            return await fetch()
        key = self._lists.key(self.host, self.url + path, query, credential)
        return await self._lists.get(key, self.url + path, fetch)

    async def _fetch_referrers(
        self,
        path: str,
        repo: str,
        query: Sequence[tuple[str, str]],
        credential: ClientCredential | None,
    ) -> ListAnswer:
        async with self._request(
            "GET", path, repo, "referrers", params=query, credential=credential
        ) as resp:
            if resp.status in _NO_REFERRERS_API:
                return ListAnswer(body=b"", link=None, status=404)
            raise_for_status(self.name, resp, errors.NAME_UNKNOWN)
            body = await self._read_capped(resp, MAX_REFERRERS_BYTES, "referrers index")
            media_type = bare_type(resp.headers.get("Content-Type", ""))
            return ListAnswer(body=body, link=resp.headers.get("Link"), media_type=media_type)

    # --- passthrough ----------------------------------------------------------------------

    async def accepts(
        self,
        repo: str,
        kind: observe.UpstreamKind,
        reference: str,
        credential: ClientCredential,
    ) -> int:
        """The status the upstream answers with the client's own credential (after its
        token flow) for `reference` in `repo`: whether it lets that client pull there. A
        `HEAD` of the manifest or blob (a tag list has no HEAD: a one-entry GET); a
        redirect counts as an answer and is not followed."""
        method, path = "HEAD", f"/v2/{repo}/manifests/{reference}"
        params: tuple[tuple[str, str], ...] = ()
        # Every manifest type: some registries answer 404 for a type the client cannot take.
        headers = {"Accept": accept_header(frozenset(MANIFEST_TYPES))}
        if kind == "blob":
            path = f"/v2/{repo}/blobs/{reference}"
        elif kind == "tags":
            method, path, params = "GET", f"/v2/{repo}/tags/list", (("n", "1"),)
        async with self._request(
            method,
            path,
            repo,
            kind,
            headers=headers,
            params=params,
            credential=credential,
            follow_redirects=False,
        ) as resp:
            return resp.status

    # --- plumbing -------------------------------------------------------------------------

    @asynccontextmanager
    async def _request(
        self,
        method: str,
        path: str,
        repo: str,
        kind: observe.UpstreamKind,
        *,
        pool: Pool | None = None,
        missing: Key | None = None,
        headers: Mapping[str, str] | None = None,
        params: Sequence[tuple[str, str]] = (),
        credential: ClientCredential | None = None,
        follow_redirects: bool = True,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send a request and yield the final response, released afterwards.

        A 404 the upstream gave for `missing` less than negative_ttl ago is answered again
        without asking; an open circuit fails at once. The request waits (at most
        pool_timeout) for a slot of its `pool`, held until the response is released; then
        getting to the response (token, redirects, headers) is bounded by `request_timeout`,
        and reading a body afterwards only by the idle `read_timeout`, so a large blob may
        take as long as it keeps arriving. Every failure is kept for the status page.
        """
        if credential is not None:
            missing = None  # a 404 for one client's credential says nothing for another's
        if missing is not None and self._negative.missing(missing):
            observe.negative_hit(self.host)
            raise RegistryError(_NOT_FOUND[kind], f"not found at upstream {self.name}")
        try:
            probe = self.breaker.admit()
            try:
                async with (pool or self._metadata).slot():
                    session = (pool or self._metadata).session
                    resp = await self._answer(
                        session,
                        _Call(method, path, repo, kind, headers or {}, params),
                        credential=credential,
                        follow_redirects=follow_redirects,
                    )
                    if resp.status == 404 and missing is not None:
                        self._negative.remember(missing)
                    try:
                        yield resp
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        raise transport_fault(self.name, exc) from None
                    finally:
                        resp.release()
            finally:
                self.breaker.finished(probe)
        except UpstreamError as exc:
            observe.upstream_failed(self.host, str(exc))
            raise

    async def _answer(
        self,
        session: aiohttp.ClientSession,
        call: _Call,
        *,
        credential: ClientCredential | None,
        follow_redirects: bool,
    ) -> aiohttp.ClientResponse:
        """`_send` within request_timeout, its failures mapped to UpstreamError and told to
        the circuit breaker (connection failures open it; any answer closes it)."""
        started, attempt = time.monotonic(), Attempt()
        try:
            async with asyncio.timeout(self._request_timeout):
                resp = await self._send(session, attempt, call, credential, follow_redirects)
        except TokenError as exc:
            if exc.rejected and credential is not None:
                raise UpstreamError(
                    errors.UNAUTHORIZED, f"upstream {self.name} refused the client's credentials"
                ) from None
            raise UpstreamError(
                errors.UPSTREAM_BAD_GATEWAY,
                f"upstream {self.name} token service failed: {exc}",
            ) from None
        except AddressRefused as exc:
            raise UpstreamError(
                errors.UPSTREAM_BAD_GATEWAY, f"upstream {self.name} sent the mirror to {exc}"
            ) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            status = "timeout" if isinstance(exc, TimeoutError) else "error"
            elapsed = time.monotonic() - started
            observe.upstream_answered(self.host, call.method, call.kind, status, elapsed)
            if isinstance(exc, _CONNECTION_FAILURES) or (
                isinstance(exc, TimeoutError) and attempt.connecting
            ):
                self.breaker.failed()
            raise transport_fault(self.name, exc) from None
        self.breaker.succeeded()
        return resp

    async def _send(
        self,
        session: aiohttp.ClientSession,
        attempt: Attempt,
        call: _Call,
        credential: ClientCredential | None,
        follow_redirects: bool,
    ) -> aiohttp.ClientResponse:
        """Follow redirects by hand, answering each origin's challenge once.

        Credentials go only to the upstream's own origin: another host (a CDN, or the
        regional registry registry.k8s.io sends manifests to) gets none, or an anonymous
        token from its own token service when it asks for one. A client's own credential
        (passthrough) is used with the upstream's token service, never sent elsewhere.
        """
        url, params = self.url + call.path, call.params
        challenged: set[Origin] = set()
        hops = 0
        while True:
            origin = origin_of(url)
            own = origin == self._origin
            scope = f"repository:{call.repo}:pull" if own else scope_for(url)
            send = CIMultiDict(call.headers)
            if authorization := await self._authorization(origin, scope, credential):
                send["Authorization"] = authorization
            started = time.monotonic()
            resp = await session.request(
                call.method,
                url,
                headers=send,
                params=params,
                allow_redirects=False,
                trace_request_ctx=attempt,
            )
            observe.upstream_answered(
                self.host, call.method, call.kind, resp.status, time.monotonic() - started
            )
            if own and (ratelimit := parse_ratelimit(resp.headers)):
                self.ratelimit = ratelimit
                observe.ratelimit_seen(self.host, ratelimit.limit, ratelimit.remaining)
            if resp.status == 401 and origin not in challenged:
                challenge = resp.headers.get("WWW-Authenticate", "")
                resp.release()
                challenged.add(origin)
                self._answer_challenge(origin, scope, challenge, credential)
                continue
            if follow_redirects and resp.status in REDIRECTS and "Location" in resp.headers:
                location = resp.headers["Location"]
                resp.release()
                hops += 1
                url = redirect_target(self.name, url, location, hops)
                await self._resolver.check_literal(urlsplit(url).hostname or "")
                params = ()  # the Location carries its own query
                continue
            return resp

    async def _authorization(
        self, origin: Origin, scope: str | None, credential: ClientCredential | None
    ) -> str | None:
        """What to send `origin`: the upstream's own origin gets the mirror's (or the
        client's) token; another origin at most an anonymous token of its own."""
        if origin == self._origin:
            return await self._auth.authorization(scope, credential)
        if (foreign := self._foreign.get(origin)) is not None:
            return await foreign.authorization(scope)
        return None

    def _answer_challenge(
        self,
        origin: Origin,
        scope: str | None,
        challenge: str,
        credential: ClientCredential | None,
    ) -> None:
        """Learn a 401's challenge so the request can be sent again with an answer."""
        if origin == self._origin:
            self._auth.forget(scope, credential)
            if self._auth.learn(challenge, credential):
                return
            raise UpstreamError(
                errors.DENIED,
                f"upstream {self.name} requires authentication the mirror is not configured for",
            )
        if (auth := self._foreign.get(origin)) is not None:
            auth.forget(scope)
        if not self._foreign.learn(origin, challenge):
            raise UpstreamError(
                errors.DENIED,
                f"upstream {self.name} redirected to {origin[1]}, which requires "
                "authentication (the upstream's credentials are never sent to another host)",
            )

    async def _read_capped(self, resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
        try:
            return await read_capped(resp, limit)
        except BodyTooLarge:
            raise UpstreamError(
                errors.UPSTREAM_BAD_GATEWAY,
                f"upstream {self.name} sent a {what} over {limit} bytes",
            ) from None


@dataclass(frozen=True)
class _Call:
    """One upstream request as the caller asked for it (before redirects and tokens)."""

    method: str
    path: str
    repo: str
    kind: observe.UpstreamKind
    headers: Mapping[str, str]
    params: Sequence[tuple[str, str]]


def content_range(headers: Mapping[str, str]) -> tuple[int, int | None] | None:
    """(start, whole size or None) from a 206's `Content-Range: bytes START-END/SIZE`
    (SIZE may be `*`); None when it says nothing usable."""
    unit, _, spec = headers.get("Content-Range", "").partition(" ")
    span, _, total = spec.partition("/")
    first = span.partition("-")[0]
    if unit != "bytes" or not first.isascii() or not first.isdigit():
        return None
    size = int(total) if total.isascii() and total.isdigit() else None
    return int(first), size


def _parse_digest(header: str | None) -> Digest | None:
    """A digest header we can use, or None (absent, malformed or unsupported)."""
    if not header:
        return None
    try:
        return Digest.parse(header.strip())
    except RegistryError:
        return None


__all__ = [
    "BlobStream",
    "FetchedManifest",
    "ManifestHead",
    "UpstreamClient",
    "UpstreamError",
]
