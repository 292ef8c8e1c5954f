"""Anonymous authentication with the registries an upstream redirects to.

registry.k8s.io redirects manifest requests to a regional Artifact Registry, which answers
with a challenge of its own. The mirror answers it as an anonymous client would: the
upstream's credentials never follow a redirect to another origin, only a token from that
origin's own token service, asked for without credentials.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from urllib.parse import urlsplit

import aiohttp

from mirror.upstream.auth import Authenticator

Origin = tuple[str, str]  # (scheme, netloc)

# Redirect targets are a handful of regional hosts; a bound keeps a hostile upstream from
# growing this with a new origin per redirect.
MAX_ORIGINS = 16
_REPOSITORY = re.compile(r"^/v2/(?P<name>.+)/(?:manifests|blobs|tags)/")


def origin_of(url: str) -> Origin:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def scope_for(url: str) -> str | None:
    """The pull scope a redirect target's registry path asks for (`/v2/<name>/...`)."""
    match = _REPOSITORY.match(urlsplit(url).path)
    return f"repository:{match['name']}:pull" if match else None


class ForeignAuth:
    """One anonymous `Authenticator` per redirect-target origin that challenged the mirror."""

    def __init__(self, session: aiohttp.ClientSession, upstream: str) -> None:
        self._session = session
        self._upstream = upstream  # for metrics
        self._by_origin: OrderedDict[Origin, Authenticator] = OrderedDict()

    def get(self, origin: Origin) -> Authenticator | None:
        """The origin's authenticator, if it has challenged the mirror before."""
        auth = self._by_origin.get(origin)
        if auth is not None:
            self._by_origin.move_to_end(origin)
        return auth

    def learn(self, origin: Origin, www_authenticate: str) -> bool:
        """Remember the origin's challenge; False when it is none an anonymous client can
        answer (Basic, or Bearer without a realm)."""
        auth = self.get(origin)
        if auth is None:
            # Anonymous, and its token realm judged against that host's own origin.
            auth = Authenticator(
                self._session,
                upstream=self._upstream,
                upstream_url=f"{origin[0]}://{origin[1]}",
                username=None,
                password=None,
            )
        if not auth.learn(www_authenticate):
            return False
        self._by_origin[origin] = auth
        while len(self._by_origin) > MAX_ORIGINS:
            self._by_origin.popitem(last=False)
        return True
