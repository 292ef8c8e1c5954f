"""The registry's read-only /v2/ API, answered the way distribution and Hub answer it.

Tag negotiation on Accept, HEAD without a body, If-None-Match, blob GETs redirected to the
CDN, paginated tag lists, and Hub's pull rate limit (GETs of manifests spend it).
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlencode

from aiohttp import web

from .cdn import Cdn
from .content import NAME_RE, TAG_RE, Content
from .images import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    Manifest,
)
from .referrers import referrers_page
from .tokens import TokenRealm
from .wire import Reply, Route, bytes_reply, error, fixed, json_body

_DIGEST_RE = re.compile(r"^[a-z0-9]+([+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_OBJECT_RE = re.compile(r"^/v2/(?P<name>.+)/(?P<op>manifests|blobs)/(?P<ref>[^/]+)$")
_TAGS_RE = re.compile(r"^/v2/(?P<name>.+)/tags/list$")
_REFERRERS_RE = re.compile(r"^/v2/(?P<name>.+)/referrers/(?P<ref>[^/]+)$")


def _accepted_types(request: web.Request) -> set[str]:
    """All media types from every Accept header, parameters and q-values dropped."""
    result: set[str] = set()
    for value in request.headers.getall("Accept", []):
        for part in value.split(","):
            media_type = part.split(";", 1)[0].strip().lower()
            if media_type:
                result.add(media_type)
    return result


def _negotiate(manifest: Manifest, accepted: set[str], *, converts: bool) -> Manifest | None:
    """distribution's tag negotiation: list → linux/amd64 child, unaccepted OCI → None.
    With `converts`, a Docker image for a client that takes OCI manifests but not Docker
    ones is rewritten on the fly (`_as_oci`)."""
    if not accepted:
        return manifest
    if manifest.media_type == DOCKER_MANIFEST_LIST and DOCKER_MANIFEST_LIST not in accepted:
        children = [c for c in manifest.children if c.platform == "linux/amd64"]
        if not children:
            return None
        manifest = children[0]
    if manifest.media_type in (OCI_MANIFEST, OCI_INDEX) and manifest.media_type not in accepted:
        return None
    if (
        converts
        and manifest.media_type == DOCKER_MANIFEST
        and DOCKER_MANIFEST not in accepted
        and OCI_MANIFEST in accepted
    ):
        return _as_oci(manifest)
    return manifest


def _as_oci(manifest: Manifest) -> Manifest:
    """A Docker image manifest rewritten as an OCI one: another document with another
    digest, which the registry serves for the tag but has not stored (so not by digest),
    the way registries that convert for old or narrow clients do."""
    document = json.loads(manifest.data)
    document["mediaType"] = OCI_MANIFEST
    document["config"]["mediaType"] = OCI_CONFIG
    for layer in document["layers"]:
        layer["mediaType"] = OCI_LAYER
    data = json.dumps(document, separators=(",", ":")).encode()
    return Manifest(data, OCI_MANIFEST, manifest.blobs, platform=manifest.platform)


class RegistryRoutes:
    """Routes /v2/ requests: ping, manifests, blobs and tag lists."""

    def __init__(
        self,
        content: Content,
        realm: TokenRealm,
        cdn: Cdn,
        *,
        redirect_blobs: bool,
        head_supported: bool,
        send_digest_header: bool,
        converts_docker_manifests: bool,
        referrers_api: bool,
        ratelimit: tuple[int, int] | None,
    ) -> None:
        """Knobs for the ways real registries differ (see FakeRegistry)."""
        self._content = content
        self._realm = realm
        self._cdn = cdn
        self.redirect_blobs = redirect_blobs
        self.head_supported = head_supported
        self.send_digest_header = send_digest_header
        self.converts_docker_manifests = converts_docker_manifests
        self.referrers_api = referrers_api
        self.referrers_page_size: int | None = None
        self.ratelimit_limit: int | None = ratelimit[0] if ratelimit else None
        self.ratelimit_remaining: int | None = ratelimit[1] if ratelimit else None

    def route(self, request: web.Request) -> Route:
        """Classify a registry request and pre-compute its auth decision."""
        path = request.path
        if path in ("/v2/", "/v2"):
            return Route("ping", self._ping, self._realm.check_access(request, None))
        kind, name, ref = "other", "", ""
        match = _OBJECT_RE.match(path)
        if match is not None:
            kind = "manifest" if match.group("op") == "manifests" else "blob"
            name, ref = match.group("name"), match.group("ref")
        elif (match := _TAGS_RE.match(path)) is not None:
            kind, name = "tags", match.group("name")
        elif (match := _REFERRERS_RE.match(path)) is not None and self.referrers_api:
            kind, name, ref = "referrers", match.group("name"), match.group("ref")
        if kind == "other":
            return Route(kind, fixed(error(404, "NOT_FOUND", "no such endpoint")))
        if request.method not in ("GET", "HEAD"):
            return Route(kind, fixed(error(405, "UNSUPPORTED", "this registry is read-only")))
        if not NAME_RE.match(name):
            reply = error(400, "NAME_INVALID", f"invalid repository name {name!r}")
            return Route(kind, fixed(reply))

        async def handle() -> Reply:
            if kind == "manifest":
                return self._manifest(request, name, ref)
            if kind == "blob":
                return self._blob(request, name, ref)
            if kind == "referrers":
                return self._referrers(request, name, ref)
            return self._tags(request, name)

        return Route(kind, handle, self._realm.check_access(request, name), repo=name)

    async def _ping(self) -> Reply:
        """GET /v2/ once authorized."""
        return Reply(200, {"Content-Type": "application/json"}, b"{}")

    def _ratelimit_headers(self) -> dict[str, str]:
        """Hub-style rate-limit headers, if rate limiting is configured."""
        if self.ratelimit_limit is None or self.ratelimit_remaining is None:
            return {}
        return {
            "ratelimit-limit": f"{self.ratelimit_limit};w=21600",
            "ratelimit-remaining": f"{max(self.ratelimit_remaining, 0)};w=21600",
            "docker-ratelimit-source": "127.0.0.1",
        }

    def _manifest(self, request: web.Request, name: str, ref: str) -> Reply:
        """GET/HEAD a manifest by tag (negotiated) or by digest (as stored)."""
        rate = self._ratelimit_headers()
        if request.method == "HEAD" and not self.head_supported:
            return error(405, "UNSUPPORTED", "HEAD is not supported here", rate)
        repo = self._content.repos.get(name)
        if repo is None:
            return error(404, "NAME_UNKNOWN", "repository name not known to registry", rate)
        if (
            request.method == "GET"
            and self.ratelimit_remaining is not None
            and self.ratelimit_remaining <= 0
        ):
            return error(
                429,
                "TOOMANYREQUESTS",
                "You have reached your pull rate limit. You may increase the limit by "
                "authenticating and upgrading: https://www.docker.com/increase-rate-limit",
                rate,
            )
        manifest: Manifest | None
        if ":" in ref:
            if not _DIGEST_RE.match(ref):
                return error(400, "DIGEST_INVALID", "invalid digest", rate)
            manifest = repo.manifests.get(ref)
        else:
            digest = repo.tags.get(ref) if TAG_RE.match(ref) else None
            manifest = repo.manifests.get(digest) if digest is not None else None
            if manifest is not None:
                manifest = _negotiate(
                    manifest,
                    _accepted_types(request),
                    converts=self.converts_docker_manifests,
                )
        if manifest is None:
            return error(404, "MANIFEST_UNKNOWN", "manifest unknown", rate)

        headers = {"Content-Type": manifest.media_type, "Etag": f'"{manifest.digest}"'}
        if self.send_digest_header:
            headers["Docker-Content-Digest"] = manifest.digest
        if_none_match = request.headers.get("If-None-Match")
        if if_none_match is not None:
            candidates = {v.strip().strip('"') for v in if_none_match.split(",")}
            if manifest.digest in candidates or "*" in candidates:
                return Reply(304, {**headers, **self._ratelimit_headers()})
        if request.method == "GET" and self.ratelimit_remaining is not None:
            self.ratelimit_remaining -= 1
        headers.update(self._ratelimit_headers())
        return Reply(200, headers, manifest.data)

    def _blob(self, request: web.Request, name: str, digest: str) -> Reply:
        """HEAD answers directly; GET redirects to the CDN or serves the bytes itself."""
        if not _DIGEST_RE.match(digest):
            return error(400, "DIGEST_INVALID", "invalid digest")
        repo = self._content.repos.get(name)
        blob = repo.blobs.get(digest) if repo is not None else None
        if blob is None:
            return error(404, "BLOB_UNKNOWN", "blob unknown to registry")
        headers = {
            "Content-Type": "application/octet-stream",
            "Docker-Content-Digest": blob.digest,
            "Etag": f'"{blob.digest}"',
            "Cache-Control": "max-age=31536000",
        }
        if request.method == "HEAD":
            return Reply(200, {**headers, "Accept-Ranges": "bytes"}, blob.data)
        if self.redirect_blobs:
            location = self._cdn.signed_url(blob.digest)
            return Reply(307, {"Location": location, "Content-Type": "text/html; charset=utf-8"})
        return bytes_reply(request, blob.data, headers)

    def _referrers(self, request: web.Request, name: str, subject: str) -> Reply:
        """The referrers API: every manifest of `name` naming `subject`, paged."""
        if not _DIGEST_RE.match(subject):
            return error(400, "DIGEST_INVALID", "invalid digest")
        start = int(request.query.get("next", "0"))
        return referrers_page(self._content, name, subject, start, self.referrers_page_size)

    def _tags(self, request: web.Request, name: str) -> Reply:
        """Paginated tag list with a path-relative Link, like distribution."""
        repo = self._content.repos.get(name)
        if repo is None:
            return error(404, "NAME_UNKNOWN", "repository name not known to registry")
        n: int | None = None
        if "n" in request.query:
            try:
                n = int(request.query["n"])
            except ValueError:
                n = -1
            if n < 0:
                return error(400, "PAGINATION_NUMBER_INVALID", "invalid number of results")
        tags = sorted(repo.tags)
        last = request.query.get("last")
        if last:
            tags = [t for t in tags if t > last]
        headers = {"Content-Type": "application/json"}
        if n is not None:
            more = len(tags) > n
            tags = tags[:n]
            if more and tags:
                query = urlencode({"n": n, "last": tags[-1]})
                headers["Link"] = f'</v2/{name}/tags/list?{query}>; rel="next"'
        return Reply(200, headers, json_body({"name": name, "tags": tags}))
