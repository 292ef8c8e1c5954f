"""The referrers endpoint (OCI 1.1): `GET /v2/<name>/referrers/<digest>`, hosted and cached
repositories alike (`mirror.cache.referrers` lists them).

Always a 200 with an image index once the repository is served, of `Content-Type` exactly
`application/vnd.oci.image.index.v1+json` (oras-go and go-containerregistry compare the
header whole: a charset would read as "no referrers API"), empty for a subject nothing
refers to; 400 for a digest that is none. `artifactType` (repeatable: any of them) filters,
said in `OCI-Filters-Applied`; `n` caps a page and `last` (a digest) starts after it, the
next page linked with `Link`, as tag lists are.
"""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from mirror import errors, mediatypes, observe
from mirror.cache.referrers import Referrers, filtered, page
from mirror.errors import RegistryError
from mirror.reference import Digest
from mirror.server import addressing
from mirror.server.routes import READ_METHODS, pagination, stale_warning
from mirror.upstream.routing import UpstreamRepo

_NAME = "{name:.+}"  # the name may contain "/"; the endpoint suffix anchors the match
FILTERS_APPLIED_HEADER = "OCI-Filters-Applied"


class ReferrersRoutes:
    """The handler of the referrers endpoint."""

    def __init__(self, referrers: Referrers) -> None:
        self._referrers = referrers

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_route("*", f"/v2/{_NAME}/referrers/{{digest}}", self.list, name="referrers")

    async def list(self, request: web.Request) -> web.Response:
        if request.method not in READ_METHODS:
            raise RegistryError(
                errors.UNSUPPORTED,
                "the referrers list is read-only: push a manifest with a `subject` instead",
            )
        repo = addressing.target(request)
        if isinstance(repo, UpstreamRepo):
            observe.routed(repo.upstream.host)
        subject = Digest.parse(request.match_info["digest"])
        query = dict(pagination(request, _digest_text))
        n = int(query["n"]) if "n" in query else None
        last = Digest.parse(query["last"]) if "last" in query else None
        artifact_types = request.query.getall("artifactType", [])

        listed = await self._referrers.of(repo, subject)
        got = page(filtered(listed.descriptors, artifact_types), n=n, last=last)
        headers = {"Content-Type": mediatypes.OCI_INDEX}
        if artifact_types:
            headers[FILTERS_APPLIED_HEADER] = "artifactType"
        if got.more:
            headers["Link"] = _next_link(request, got.descriptors[-1]["digest"], n)
        if listed.stale is not None:
            headers["Warning"] = stale_warning(listed.stale)
        return web.Response(body=got.index(), headers=headers)


def _digest_text(value: str) -> str:
    """`last`, which must be a digest (DIGEST_INVALID otherwise)."""
    return str(Digest.parse(value))


def _next_link(request: web.Request, last: str, n: int | None) -> str:
    """The next page, for the name the client used, its filters and `ns` kept."""
    query: list[tuple[str, str]] = [] if n is None else [("n", str(n))]
    query.append(("last", last))
    query += [("artifactType", t) for t in request.query.getall("artifactType", [])]
    if (ns := request.query.get("ns")) is not None:
        query.append(("ns", ns))
    name, subject = request.match_info["name"], request.match_info["digest"]
    return f'</v2/{name}/referrers/{subject}?{urlencode(query)}>; rel="next"'
