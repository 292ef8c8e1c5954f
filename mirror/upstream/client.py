"""The client for one upstream registry: one long-lived aiohttp session, challenge-driven auth,
hand-followed redirects, timeouts, and upstream faults mapped to clean registry errors.

Everything the mirror asks an upstream goes through `UpstreamClient`; callers get parsed
answers or a `RegistryError` and never see aiohttp exceptions.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp
from multidict import CIMultiDict

from mirror import errors, observe
from mirror.config import UpstreamSettings
from mirror.errors import ErrorCode, RegistryError
from mirror.mediatypes import bare_type, is_manifest_type
from mirror.ratelimit import RateLimit, parse_ratelimit
from mirror.reference import Digest
from mirror.upstream.auth import Authenticator, TokenError

log = logging.getLogger(__name__)

USER_AGENT = "mirror/0.1 (pull-through cache)"
MAX_REDIRECTS = 10
# distribution refuses manifests over 4 MiB; so does the mirror, to bound memory.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_TAGS_BYTES = 16 * 1024 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Where a redirect may lead: never file:, ftp: or anything else aiohttp might not refuse.
_SCHEMES = frozenset({"http", "https"})


class UpstreamError(RegistryError):
    """The upstream failed to give an answer (network, timeout, 5xx, 429, auth trouble),
    as opposed to an authoritative answer such as 404."""


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


@dataclass(frozen=True)
class TagsPage:
    body: bytes
    link: str | None


@dataclass
class BlobStream:
    """An open upstream blob body. `size` is None when the upstream sent no length."""

    size: int | None
    chunks: AsyncIterator[bytes]


class UpstreamClient:
    """Talks to one upstream registry. Create inside the event loop; `close()` at shutdown."""

    def __init__(
        self,
        settings: UpstreamSettings,
        *,
        request_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
    ) -> None:
        self.url = settings.url.rstrip("/")
        #: The registry this upstream stands for (`docker.io`): what keys its cache records.
        self.host = settings.host
        self.library_prefix = settings.library_prefix
        parts = urlsplit(self.url)
        self.name = parts.netloc  # used in every message; never includes credentials
        self._origin = (parts.scheme, parts.netloc)
        self._request_timeout = request_timeout
        #: The latest rate-limit budget the upstream announced (Docker Hub), if any.
        self.ratelimit: RateLimit | None = None
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._session = aiohttp.ClientSession(
            timeout=timeout,
            auto_decompress=False,  # digests cover the bytes as sent
            connector=aiohttp.TCPConnector(
                limit=256, limit_per_host=64, ssl=settings.ssl_context()
            ),
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        )
        self._auth = Authenticator(
            self._session,
            upstream=self.host,
            username=settings.username,
            password=settings.password,
        )

    async def close(self) -> None:
        await self._session.close()

    # --- manifests ------------------------------------------------------------------------

    async def head_manifest(self, repo: str, reference: str, accept: str) -> ManifestHead | None:
        """Resolve a reference with HEAD (free on Docker Hub). None when the upstream's HEAD
        cannot tell (405, or no digest, length or type), so the caller falls back to GET."""
        path = f"/v2/{repo}/manifests/{reference}"
        headers = {"Accept": accept}
        async with self._request("HEAD", path, repo, "manifest", headers=headers) as resp:
            if resp.status == 405:
                return None
            self._raise_for_status(resp, errors.MANIFEST_UNKNOWN)
            digest = _parse_digest(resp.headers.get("Docker-Content-Digest"))
            length = resp.headers.get("Content-Length", "")
            media_type = bare_type(resp.headers.get("Content-Type", ""))
            if digest is None or not length.isdigit() or not is_manifest_type(media_type):
                return None  # a type off the allow-list: the GET refuses it, with reasons
            return ManifestHead(digest=digest, media_type=media_type, size=int(length))

    async def get_manifest(
        self, repo: str, reference: str, accept: str, *, algorithm: str | None = None
    ) -> FetchedManifest:
        """GET a manifest and hash it with `algorithm` (default: the one the upstream's
        digest header uses, else sha256); the caller checks the digest it expected."""
        path = f"/v2/{repo}/manifests/{reference}"
        headers = {"Accept": accept}
        async with self._request("GET", path, repo, "manifest", headers=headers) as resp:
            self._raise_for_status(resp, errors.MANIFEST_UNKNOWN)
            data = await self._read_capped(resp, MAX_MANIFEST_BYTES, "manifest")
            observe.upstream_received(self.host, len(data))
            media_type = bare_type(resp.headers.get("Content-Type", ""))
            claimed = _parse_digest(resp.headers.get("Docker-Content-Digest"))
        if algorithm is None:
            algorithm = claimed.algorithm if claimed is not None else "sha256"
        digest = Digest(algorithm, hashlib.new(algorithm, data).hexdigest())
        return FetchedManifest(data=data, media_type=media_type, digest=digest, claimed=claimed)

    # --- blobs ----------------------------------------------------------------------------

    async def head_blob(self, repo: str, digest: Digest) -> int | None:
        """The blob's size from an upstream HEAD (no download); None if not given."""
        async with self._request("HEAD", f"/v2/{repo}/blobs/{digest}", repo, "blob") as resp:
            self._raise_for_status(resp, errors.BLOB_UNKNOWN)
            length = resp.headers.get("Content-Length")
            return int(length) if length is not None and length.isdigit() else None

    @asynccontextmanager
    async def open_blob(self, repo: str, digest: Digest) -> AsyncIterator[BlobStream]:
        """Open the blob body, following redirects to CDN storage (without our credentials)."""
        async with self._request("GET", f"/v2/{repo}/blobs/{digest}", repo, "blob") as resp:
            self._raise_for_status(resp, errors.BLOB_UNKNOWN)
            # Whatever has arrived, as soon as it has: waiting to fill a fixed-size chunk
            # would delay every client's first byte.
            yield BlobStream(size=resp.content_length, chunks=resp.content.iter_any())

    # --- tags -----------------------------------------------------------------------------

    async def get_tags(self, repo: str, query: Sequence[tuple[str, str]]) -> TagsPage:
        path = f"/v2/{repo}/tags/list"
        async with self._request("GET", path, repo, "tags", params=query) as resp:
            self._raise_for_status(resp, errors.NAME_UNKNOWN)
            body = await self._read_capped(resp, MAX_TAGS_BYTES, "tag list")
            return TagsPage(body=body, link=resp.headers.get("Link"))

    # --- plumbing -------------------------------------------------------------------------

    @asynccontextmanager
    async def _request(
        self,
        method: str,
        path: str,
        repo: str,
        kind: observe.UpstreamKind,
        *,
        headers: Mapping[str, str] | None = None,
        params: Sequence[tuple[str, str]] = (),
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send a request and yield the final response, released afterwards.

        Getting to the response (token, redirects, headers) is bounded by `request_timeout`;
        reading a body afterwards only by the idle `read_timeout`, so a large blob may take
        as long as it keeps arriving. Every failure is kept for the status page.
        """
        started = time.monotonic()
        try:
            try:
                async with asyncio.timeout(self._request_timeout):
                    resp = await self._send(method, path, repo, kind, headers or {}, params)
            except TokenError as exc:
                raise UpstreamError(
                    errors.UPSTREAM_BAD_GATEWAY,
                    f"upstream {self.name} token service failed: {exc}",
                ) from None
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = "timeout" if isinstance(exc, TimeoutError) else "error"
                observe.upstream_answered(
                    self.host, method, kind, status, time.monotonic() - started
                )
                raise self._fault(exc) from None
            try:
                yield resp
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise self._fault(exc) from None
            finally:
                resp.release()
        except UpstreamError as exc:
            observe.upstream_failed(self.host, str(exc))
            raise

    async def _send(
        self,
        method: str,
        path: str,
        repo: str,
        kind: observe.UpstreamKind,
        headers: Mapping[str, str],
        params: Sequence[tuple[str, str]],
    ) -> aiohttp.ClientResponse:
        """Retry once on 401 with fresh credentials and follow redirects by hand.

        Credentials go only to the upstream's own origin: a redirect to a CDN on another
        host gets none (presigned storage URLs reject them, and they must not leak).
        """
        scope = f"repository:{repo}:pull"
        url = self.url + path
        retried_auth = False
        hops = 0
        while True:
            send = CIMultiDict(headers)
            own_origin = self._is_own_origin(url)
            if own_origin and (authorization := await self._auth.authorization(scope)):
                send["Authorization"] = authorization
            started = time.monotonic()
            resp = await self._session.request(
                method, url, headers=send, params=params, allow_redirects=False
            )
            observe.upstream_answered(
                self.host, method, kind, resp.status, time.monotonic() - started
            )
            if own_origin and (ratelimit := parse_ratelimit(resp.headers)):
                self.ratelimit = ratelimit
                observe.ratelimit_seen(self.host, ratelimit.limit, ratelimit.remaining)
            if resp.status == 401 and own_origin and not retried_auth:
                challenge = resp.headers.get("WWW-Authenticate", "")
                resp.release()
                self._auth.forget(scope)
                if not self._auth.learn(challenge):
                    raise UpstreamError(
                        errors.DENIED,
                        f"upstream {self.name} requires authentication the mirror "
                        "is not configured for",
                    )
                retried_auth = True
                continue
            if resp.status in _REDIRECTS and "Location" in resp.headers:
                location = resp.headers["Location"]
                resp.release()
                hops += 1
                url = self._redirect_target(url, location, hops)
                params = ()  # the Location carries its own query
                continue
            return resp

    def _redirect_target(self, url: str, location: str, hops: int) -> str:
        """Where the `hops`-th redirect leads, refused past MAX_REDIRECTS or to a scheme
        other than http(s) (a `file:` Location must never be followed)."""
        if hops > MAX_REDIRECTS:
            raise UpstreamError(
                errors.UPSTREAM_BAD_GATEWAY,
                f"upstream {self.name} redirected more than {MAX_REDIRECTS} times",
            )
        target = urljoin(url, location)
        if (scheme := urlsplit(target).scheme.lower()) not in _SCHEMES:
            raise UpstreamError(
                errors.UPSTREAM_BAD_GATEWAY,
                f"upstream {self.name} redirected to a {scheme or 'schemeless'}: URL; "
                "the mirror follows redirects to http and https only",
            )
        return target

    def _is_own_origin(self, url: str) -> bool:
        parts = urlsplit(url)
        return (parts.scheme, parts.netloc) == self._origin

    def _fault(self, exc: BaseException) -> UpstreamError:
        """Map a transport failure to the status a client should see, naming the upstream."""
        if isinstance(exc, TimeoutError):
            return UpstreamError(errors.UPSTREAM_TIMEOUT, f"upstream {self.name} timed out")
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            cause = exc.certificate_error
            reason = getattr(cause, "verify_message", None) or type(cause).__name__
            return UpstreamError(
                errors.UPSTREAM_BAD_GATEWAY,
                f"upstream {self.name} has a TLS certificate the mirror does not trust "
                f"({reason}): set the upstream's ca_file, or insecure = true for a lab",
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            return UpstreamError(
                errors.UPSTREAM_UNAVAILABLE, f"upstream {self.name} is unreachable: {exc.strerror}"
            )
        if isinstance(exc, aiohttp.ClientPayloadError):
            return UpstreamError(
                errors.UPSTREAM_BAD_GATEWAY,
                f"upstream {self.name} broke off the response body (connection closed or "
                "reset before its end)",
            )
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return UpstreamError(
                errors.UPSTREAM_BAD_GATEWAY,
                f"upstream {self.name} closed the connection without answering",
            )
        log.warning("upstream %s failed: %s", self.name, type(exc).__name__)
        return UpstreamError(
            errors.UPSTREAM_BAD_GATEWAY,
            f"upstream {self.name} failed: {type(exc).__name__}",
        )

    def _raise_for_status(self, resp: aiohttp.ClientResponse, not_found: ErrorCode) -> None:
        status = resp.status
        if 200 <= status < 300:
            return
        if status == 404:
            raise RegistryError(not_found, f"not found at upstream {self.name}")
        if status in (401, 403):
            raise UpstreamError(
                errors.DENIED,
                f"upstream {self.name} denied access: the repository does not exist "
                "or needs credentials the mirror does not have",
            )
        if status == 429:
            headers = {}
            if retry_after := resp.headers.get("Retry-After"):
                headers["Retry-After"] = retry_after
            raise UpstreamError(
                errors.TOOMANYREQUESTS,
                f"upstream {self.name} is rate limiting the mirror",
                headers=headers,
            )
        raise UpstreamError(
            errors.UPSTREAM_BAD_GATEWAY, f"upstream {self.name} answered HTTP {status}"
        )

    async def _read_capped(self, resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
        too_big = UpstreamError(
            errors.UPSTREAM_BAD_GATEWAY, f"upstream {self.name} sent a {what} over {limit} bytes"
        )
        if resp.content_length is not None and resp.content_length > limit:
            raise too_big
        parts: list[bytes] = []
        total = 0
        async for chunk in resp.content.iter_any():
            total += len(chunk)
            if total > limit:
                raise too_big
            parts.append(chunk)
        return b"".join(parts)


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
    "TagsPage",
    "UpstreamClient",
    "UpstreamError",
]
