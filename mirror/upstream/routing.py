"""Which upstream a request is for, decided only from the mirror's own configuration.

Three ways to name the registry, tried in order:

1. containerd's `?ns=<host>` query parameter (sent on every request to a mirror);
2. a path prefix, `/v2/<host>/<name>/...`, for clients that cannot set a mirror per
   registry (`docker pull mirror:5000/ghcr.io/org/app:1`);
3. otherwise docker.io, which is what Docker's `registry-mirrors` relies on.

A host that is not configured is refused before anything is resolved or contacted: neither
`ns=` nor the path can make the mirror connect somewhere its operator did not list.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from mirror import errors
from mirror.config import DOCKER_HUB, DOCKER_HUB_HOSTS, Config
from mirror.errors import RegistryError
from mirror.reference import is_registry_host, looks_like_host, parse_name
from mirror.upstream.client import UpstreamClient
from mirror.upstream.credentials import ClientCredential
from mirror.upstream.hosting import HostedRepo, Hosting
from mirror.upstream.lists import ListCache
from mirror.upstream.options import ClientOptions

# How much of an unknown host a refusal quotes back.
_QUOTE_LIMIT = 100
# Names resolved and remembered at most (every request with a `{name}` resolves its own).
_RESOLVED_KEPT = 10_000


@dataclass(frozen=True)
class UpstreamRepo:
    """A repository on one upstream: what every cache operation is addressed to."""

    upstream: UpstreamClient
    name: str  # as the upstream knows it (`library/alpine`, not `alpine`)
    #: The requesting client's own credential, for a passthrough upstream: every upstream
    #: request made for this repository on the client's behalf carries it.
    credential: ClientCredential | None = field(default=None, repr=False, compare=False)

    @property
    def host(self) -> str:
        return self.upstream.host

    @property
    def qualified(self) -> str:
        """`host/name`: unique across upstreams (`ghcr.io/org/app`)."""
        return f"{self.upstream.host}/{self.name}"


class Router:
    """Maps registry hosts (and their aliases) to the configured upstream clients."""

    def __init__(self, upstreams: Iterable[UpstreamClient], hosted: Iterable[str] = ()) -> None:
        self.upstreams = tuple(upstreams)
        self.hosting = Hosting(hosted)
        self._by_name: dict[str, UpstreamClient] = {}
        for upstream in self.upstreams:
            names = {upstream.host, upstream.name.lower()}
            if upstream.host == DOCKER_HUB:
                names |= DOCKER_HUB_HOSTS
            for name in names:
                self._by_name.setdefault(name, upstream)
        self.default = self._by_name.get(DOCKER_HUB)
        self._resolved: dict[tuple[str, str | None], UpstreamRepo | HostedRepo] = {}

    @classmethod
    def from_config(cls, config: Config, lists: ListCache) -> Router:
        """A client for every upstream `config` serves, keeping tag lists in `lists`
        (create inside the event loop)."""
        return cls(
            (
                UpstreamClient(
                    settings, ClientOptions.from_config(config.registries, settings), lists=lists
                )
                for settings in config.registries.upstreams
            ),
            config.hosting.hosted,
        )

    @property
    def hosts(self) -> list[str]:
        return [upstream.host for upstream in self.upstreams]

    def resolve(self, name: str, ns: str | None) -> UpstreamRepo | HostedRepo:
        """What a request path's `name` (and `ns`) addresses: a hosted repository when a
        `hosted` pattern matches it, else an upstream one (see `repository`). Remembered
        per name, as it depends on the configuration alone (refusals are raised anew)."""
        if (known := self._resolved.get((name, ns))) is not None:
            return known
        hosted = self.hosting.match(name, ns)
        target = hosted if hosted is not None else self.repository(name, ns)
        if len(self._resolved) >= _RESOLVED_KEPT:
            self._resolved.clear()  # crude but bounded
        self._resolved[name, ns] = target
        return target

    def repository(self, name: str, ns: str | None) -> UpstreamRepo:
        """The upstream repository a request path's `name` (and `ns`) addresses.

        Raises NAME_UNKNOWN for a registry the mirror does not serve, NAME_INVALID for a
        name that breaks the grammar."""
        if ns is not None:
            upstream = self.upstream(ns)
        else:
            first, sep, rest = name.partition("/")
            if sep and looks_like_host(first):
                if not is_registry_host(first):
                    raise RegistryError(
                        errors.NAME_INVALID,
                        "invalid repository name",
                        detail={"name": name[:_QUOTE_LIMIT]},
                    )
                upstream, name = self.upstream(first), rest
            else:
                upstream = self.upstream(None)
        name = parse_name(name)
        if upstream.library_prefix and "/" not in name:
            name = f"library/{name}"  # Docker Hub's official images: alpine is library/alpine
        return UpstreamRepo(upstream, name)

    def upstream(self, host: str | None) -> UpstreamClient:
        """The upstream for `host` (None: the default, docker.io)."""
        upstream = self.default if host is None else self._by_name.get(host.lower())
        if upstream is None:
            what = "docker.io" if host is None else repr(host[:_QUOTE_LIMIT])
            raise RegistryError(
                errors.NAME_UNKNOWN,
                f"registry {what} is not served by this mirror; it serves " + ", ".join(self.hosts),
            )
        return upstream

    async def close(self) -> None:
        for upstream in self.upstreams:
            await upstream.close()
