"""The blob CDN that registry blob GETs redirect to, with object storage's rules.

A different origin that refuses Authorization, answers only GET on a URL whose signature
it issued, and stops honouring it once expired: a client that forwards its registry token
or re-uses a stale URL fails here as it would against Hub's real CDN.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from urllib.parse import urlencode

from aiohttp import web

from .content import Content
from .wire import Reply, Route, bytes_reply, fixed, text

CDN_URL_TTL = 600
_CDN_RE = re.compile(r"^/blobs/(?P<digest>[^/]+)$")


class Cdn:
    """Signs blob URLs for the registry and serves them."""

    def __init__(self, content: Content, base_url: Callable[[], str]) -> None:
        """`base_url` gives the CDN's origin once the servers listen."""
        self._content = content
        self._base_url = base_url
        self._sigs: dict[str, tuple[str, float]] = {}

    def signed_url(self, digest: str) -> str:
        """A presigned URL for one blob, valid for CDN_URL_TTL seconds."""
        sig = secrets.token_hex(16)
        expires = int(time.time()) + CDN_URL_TTL
        self._sigs[sig] = (digest, float(expires))
        query = urlencode({"expires": expires, "sig": sig})
        return f"{self._base_url()}/blobs/{digest}?{query}"

    def expire_urls(self) -> None:
        """Invalidate every issued URL (403 on use)."""
        self._sigs.clear()

    def route(self, request: web.Request) -> Route:
        """Classify a CDN request; Authorization and bad signatures are refused up front."""
        match = _CDN_RE.match(request.path)
        if match is None:
            return Route("cdn", fixed(text(404, "NoSuchKey")))
        digest = match.group("digest")

        async def handle() -> Reply:
            blob = self._content.blobs.get(digest)
            if blob is None:
                return text(404, "NoSuchKey")
            headers = {"Content-Type": "application/octet-stream", "Etag": f'"{blob.digest}"'}
            return bytes_reply(request, blob.data, headers)

        return Route("cdn", handle, self._denial(request, digest))

    def _denial(self, request: web.Request, digest: str) -> Reply | None:
        """Object-storage rules: no Authorization, GET only, and a signature we issued."""
        if "Authorization" in request.headers:
            return text(400, "authorization header not allowed")
        if request.method == "HEAD":
            # A presigned URL signs the method; HEAD on a GET URL fails, as ghcr's does.
            return text(403, "SignatureDoesNotMatch")
        if request.method != "GET":
            return text(405, "MethodNotAllowed")
        issued = self._sigs.get(request.query.get("sig", ""))
        if issued is None or issued[0] != digest:
            return text(403, "SignatureDoesNotMatch")
        if issued[1] < time.time():
            return text(403, "Request has expired")
        return None
