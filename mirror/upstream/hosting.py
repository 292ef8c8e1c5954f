"""Which repositories the mirror hosts itself (`hosted`) rather than fetches from upstream.

A hosted repository is matched by the name the client addresses, before any upstream is
chosen: `/v2/local/app` on the default registry, the same behind a Docker Hub path prefix
(`/v2/docker.io/local/app`) or containerd's `?ns=docker.io`, and, for patterns that start
with a host, that host's path prefix or `ns=` (`registry.local/team/*` matches
`/v2/registry.local/team/app`). A hosted repository is never routed to an upstream, so no
pull can reach one for it and no cached tag can shadow it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from mirror import errors
from mirror.config import DOCKER_HUB_HOSTS
from mirror.errors import RegistryError
from mirror.reference import is_registry_host, looks_like_host, parse_name

#: The host hosted repositories are recorded and authorised under (no registry host is
#: spelt this way: it has no "." or ":" and is not "localhost").
HOSTED = "hosted"


@dataclass(frozen=True)
class HostedRepo:
    """A repository the mirror hosts: read-write, served from the store alone."""

    name: str  # as matched: `local/app`, or `registry.local/team/app`

    @property
    def host(self) -> str:
        return HOSTED

    @property
    def qualified(self) -> str:
        return f"{HOSTED}/{self.name}"


class Hosting:
    """The `hosted` patterns, and which addressed names they match."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)

    def claims(self, name: str, ns: str | None) -> bool:
        """Whether a pattern matches `name` (with `ns`), valid or not."""
        addressed = _addressed(name, ns)
        return addressed is not None and any(
            fnmatch.fnmatchcase(addressed, pattern) for pattern in self.patterns
        )

    def match(self, name: str, ns: str | None) -> HostedRepo | None:
        """The hosted repository `name` (with `ns`) addresses, or None when no pattern
        matches it. Raises NAME_INVALID for a matching name that breaks the grammar."""
        addressed = _addressed(name, ns)
        if addressed is None or not self.claims(name, ns):
            return None
        return HostedRepo(parse_hosted_name(addressed))


def _addressed(name: str, ns: str | None) -> str | None:
    """The name as a pattern sees it: Docker Hub's own prefix dropped, any other host kept;
    None for an `ns` that names no registry host."""
    if ns is not None:
        host = ns.lower()
        if host in DOCKER_HUB_HOSTS:
            return name
        return f"{host}/{name}" if is_registry_host(host) else None
    first, sep, rest = name.partition("/")
    if sep and first.lower() in DOCKER_HUB_HOSTS:
        return rest
    return name


def parse_hosted_name(name: str) -> str:
    """A hosted repository's name, `local/app` or `registry.local/team/app`, checked
    against the grammar (NAME_INVALID when it breaks it)."""
    first, sep, rest = name.partition("/")
    if sep and looks_like_host(first):
        if not is_registry_host(first):
            raise RegistryError(
                errors.NAME_INVALID, "invalid repository name", detail={"name": name[:100]}
            )
        return f"{first}/{parse_name(rest)}"
    return parse_name(name)
