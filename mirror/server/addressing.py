"""The repository a request addresses, resolved once per request.

A registry route's `{name}` (with containerd's `?ns=` or a host prefix, else docker.io)
maps through the `Router` to a `HostedRepo` when a `hosted` pattern matches it, else to an
`UpstreamRepo`. The authorisation middleware (to apply the
rules) and the handler (to serve) both need it, so a middleware outside both resolves it
once and keeps the outcome on the request: the repository, or the refusal (NAME_UNKNOWN
for a registry the mirror does not serve, NAME_INVALID for a bad name). Resolving never
looks a host up or connects anywhere. The refusal is raised only where a handler asks for
the repository, so authentication (401) and the handler's own checks (a push refused as
UNSUPPORTED) still come before it.

A request routed by `ns` gets it back in `OCI-Namespace` (the spec's SHOULD for a proxy
that uses `ns`); one whose `ns` the mirror refuses does not.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from mirror.errors import RegistryError
from mirror.upstream.hosting import HostedRepo
from mirror.upstream.routing import Router, UpstreamRepo

Target = UpstreamRepo | HostedRepo

# The outcome of resolving the route's `{name}`; set for every route that has one.
REPOSITORY: web.RequestKey[Target | RegistryError] = web.RequestKey("mirror.repository")
# The `ns` a request was routed by, as the client sent it: echoed as `OCI-Namespace`.
NAMESPACE: web.RequestKey[str] = web.RequestKey("mirror.namespace")
OCI_NAMESPACE_HEADER = "OCI-Namespace"


def resolve_repositories(router: Router) -> Middleware:
    """The middleware that resolves each request's repository with `router`; it goes
    outside the authorisation middleware and inside the error middleware."""

    @web.middleware
    async def resolve_repository(request: web.Request, handler: Handler) -> web.StreamResponse:
        name = request.match_info.get("name")
        ns = request.query.get("ns")
        if name is not None:
            try:
                request[REPOSITORY] = router.resolve(name, ns)
            except RegistryError as exc:
                request[REPOSITORY] = exc
            else:
                if ns is not None:
                    request[NAMESPACE] = ns
        return await handler(request)

    return resolve_repository


def routed_by_namespace(request: web.Request, ns: str) -> None:
    """Note that `ns` chose the registry this request is answered from (the mirror serves
    it): the response says so in `OCI-Namespace`, as the spec asks of a proxy that uses it."""
    request[NAMESPACE] = ns


async def echo_namespace(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: the `ns` the request was routed by, on every response to it,
    errors included (the error middleware renders those outside the handler)."""
    if (ns := request.get(NAMESPACE)) is not None:
        response.headers[OCI_NAMESPACE_HEADER] = ns


def target(request: web.Request) -> Target:
    """The repository the request addresses, hosted or upstream; raises the refusal if it
    addresses none the mirror serves."""
    outcome = request[REPOSITORY]
    if isinstance(outcome, RegistryError):
        raise outcome
    return outcome


def served_target(request: web.Request) -> Target | None:
    """The repository the request addresses, or None if the mirror refuses it (the handler
    says why). Only for a route with a `{name}`: a missing outcome is a wiring mistake and
    raises KeyError rather than passing for "nothing to check"."""
    outcome = request[REPOSITORY]
    return None if isinstance(outcome, RegistryError) else outcome


def served_repository(request: web.Request) -> UpstreamRepo | None:
    """The upstream repository the request addresses; None for a hosted one or a refusal."""
    outcome = served_target(request)
    return outcome if isinstance(outcome, UpstreamRepo) else None
