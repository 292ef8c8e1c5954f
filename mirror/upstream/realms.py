"""Which token realms an upstream may send the mirror's (or a client's) credentials to.

A `WWW-Authenticate` challenge names any URL as its realm; followed blindly, a hostile or
compromised upstream could make the mirror send its credentials (and request internal URLs)
anywhere. A realm is accepted when it uses https (http only if the upstream itself is
http) and its host is the upstream's own host, shares the upstream's registrable domain,
is in the upstream's `token_hosts`, or (for test and lab upstreams on loopback) is loopback
as well.

The registrable domain is a deliberately small public-suffix rule: the last two labels of
the name, or the last three under a known two-level suffix (`co.uk`, `com.au`, ...). Under a
shared hosting suffix where every subdomain is another tenant (`azurecr.io`,
`amazonaws.com`, ...) only the upstream's own host counts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

# Second-level suffixes under which a registrable domain has three labels.
_TWO_LEVEL_SUFFIXES = frozenset(
    {
        "co.uk", "org.uk", "ac.uk", "gov.uk", "me.uk", "ltd.uk", "plc.uk",
        "com.au", "net.au", "org.au", "edu.au", "gov.au",
        "co.jp", "ne.jp", "or.jp", "ac.jp", "go.jp",
        "co.nz", "org.nz", "co.za", "org.za", "co.in", "net.in", "org.in",
        "com.br", "net.br", "org.br", "com.cn", "net.cn", "org.cn",
        "com.mx", "com.sg", "com.tw", "com.hk", "co.kr", "or.kr", "com.tr", "co.il",
    }
)  # fmt: skip
# Suffixes whose subdomains belong to different customers: no sharing between them.
_SHARED_HOSTING_SUFFIXES = frozenset(
    {"azurecr.io", "amazonaws.com", "pkg.dev", "cloudfront.net", "herokuapp.com"}
)


def registrable_domain(host: str) -> str:
    """`auth.docker.io` -> `docker.io`; `a.b.example.co.uk` -> `example.co.uk`."""
    labels = host.lower().rstrip(".").split(".")
    size = 3 if ".".join(labels[-2:]) in _TWO_LEVEL_SUFFIXES else 2
    return ".".join(labels[-size:])


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _shared_hosting(host: str) -> bool:
    return any(host == s or host.endswith("." + s) for s in _SHARED_HOSTING_SUFFIXES)


def realm_refusal(realm: str, upstream_url: str, token_hosts: Iterable[str]) -> str | None:
    """Why credentials must not go to `realm` for the upstream at `upstream_url`, or None
    when the realm is acceptable."""
    realm_parts, own = urlsplit(realm), urlsplit(upstream_url)
    scheme = realm_parts.scheme.lower()
    host = (realm_parts.hostname or "").lower()
    own_host = (own.hostname or "").lower()
    if scheme != "https" and not (scheme == "http" and own.scheme.lower() == "http"):
        return f"its token realm {realm_parts.scheme or 'without a scheme'}://{host} is not https"
    if not host:
        return "its token realm has no host"
    allowed = {h.lower() for h in token_hosts}
    if host == own_host or host in allowed:
        return None
    if _is_loopback(own_host) and _is_loopback(host):
        return None
    if not (_is_ip(host) or _is_ip(own_host) or _shared_hosting(own_host)) and (
        registrable_domain(host) == registrable_domain(own_host)
    ):
        return None
    return (
        f"its token realm is on {host}, outside {own_host}'s own domain "
        "(list it in the upstream's token_hosts if it really is that registry's token service)"
    )
