"""Which redirects the upstream client follows: a few hops, to http(s) only. (Where they
may connect is the resolver's guard, `addresses.py`; what credentials they get, the
client's.)"""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

from mirror import errors
from mirror.upstream.failures import UpstreamError

MAX_REDIRECTS = 10
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Where a redirect may lead: never file:, ftp: or anything else aiohttp might not refuse.
_SCHEMES = frozenset({"http", "https"})


def redirect_target(name: str, url: str, location: str, hops: int) -> str:
    """Where the `hops`-th redirect from `url` leads, refused past MAX_REDIRECTS or to a
    scheme other than http(s) (a `file:` Location must never be followed)."""
    if hops > MAX_REDIRECTS:
        raise UpstreamError(
            errors.UPSTREAM_BAD_GATEWAY,
            f"upstream {name} redirected more than {MAX_REDIRECTS} times",
        )
    target = urljoin(url, location)
    if (scheme := urlsplit(target).scheme.lower()) not in _SCHEMES:
        raise UpstreamError(
            errors.UPSTREAM_BAD_GATEWAY,
            f"upstream {name} redirected to a {scheme or 'schemeless'}: URL; "
            "the mirror follows redirects to http and https only",
        )
    return target
