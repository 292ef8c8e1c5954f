"""The second peer: Debian's nginx with `proxy_cache` in front of the benchmark's upstream, as
an operator would put a plain caching reverse proxy before a registry.

How it is set up, and why:

- The upstream wants a bearer token and nginx cannot fetch one, so nginx sends a pull token
  for every seeded repository with each request it passes on (`proxy_set_header
  Authorization`): the token is fetched from the token server each time nginx starts (the
  tokens live 5 minutes; every cold run starts nginx afresh, and a warm run sends nothing
  upstream). Clients send no credentials, as to ours and distribution. The cache key leaves
  Authorization out, so one cached answer serves every client.
- Manifests are cached per `Accept` (the upstream negotiates a tag's manifest by it), blobs
  per path only. Everything the upstream answers 200 stays valid for a day
  (`proxy_cache_valid`), the upstream's own caching headers ignored, so a warm run is
  answered entirely from the cache, as ours (with a tag TTL of an hour) answers it.
- `proxy_cache_lock`: while a blob is being fetched, other requests for it wait for the
  cached copy instead of fetching it again (the lock ages and times out only after 10
  minutes; nginx's 5 s defaults would send a second fetch of a slow 200 MiB blob).
- `proxy_buffering on` (the default), `sendfile on`, `tcp_nopush on` (as Debian's
  nginx.conf), keep-alive connections to the upstream, the cache on the same disk as the
  other servers' storage with no separate temp path; a worker per core and no access log
  (`testkit.nginx.main_conf`).
- Every answer carries `X-Cache-Status: $upstream_cache_status`, which the benchmark checks
  (`require_hit`): a warm figure of nginx not served from its cache fails the run.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from testkit.mirrorserver import http_request
from testkit.nginx import Nginx

CACHE_STATUS = "x-cache-status"
VALID = "1d"  # how long a cached 200 stays fresh: longer than any run
LOCK = "10m"  # proxy_cache_lock_timeout and _age

SITE = """upstream registry_upstream {{
    server {upstream};
    keepalive 16;
}}

proxy_cache_path {cache} levels=1:2 keys_zone=registry:16m max_size=8g inactive=1d
                 use_temp_path=off;

server {{
    listen {{listen}};
    sendfile on;
    tcp_nopush on;

    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Authorization "Bearer {token}";
    proxy_buffering on;

    proxy_cache registry;
    proxy_cache_valid 200 {valid};
    proxy_ignore_headers Cache-Control Expires Set-Cookie;
    proxy_cache_lock on;
    proxy_cache_lock_timeout {lock};
    proxy_cache_lock_age {lock};
    add_header X-Cache-Status $upstream_cache_status always;

    location ~ ^/v2/.+/manifests/ {{
        proxy_cache_key $scheme$proxy_host$uri$is_args$args|$http_accept;
        proxy_pass http://registry_upstream;
    }}
    location /v2/ {{
        proxy_cache_key $scheme$proxy_host$uri$is_args$args;
        proxy_pass http://registry_upstream;
    }}
}}
"""


def cache_site(upstream: str, cache: Path, token: str) -> str:
    """The server conf: `upstream` is HOST:PORT, `cache` the cache directory, `token` the
    bearer token sent upstream; `{listen}` stays for `Nginx` to fill in."""
    return SITE.format(upstream=upstream, cache=cache, token=token, valid=VALID, lock=LOCK)


class NginxCache(Nginx):
    """nginx with `cache_site` on a loopback port; `restart_fresh` starts it again on the
    same port with an empty cache and a new token."""

    name = "nginx"
    label = "nginx"

    def __init__(self, workdir: Path, upstream_host: str, token: Callable[[], str]) -> None:
        super().__init__(workdir, site="")
        self.upstream_host = upstream_host
        self.token = token
        self.generation = 0
        self.sent_token = ""

    @property
    def cache(self) -> Path:
        return self.workdir / f"cache-{self.generation}"

    def argv(self) -> list[str]:
        self.sent_token = self.token()
        self.site = cache_site(self.upstream_host, self.cache, self.sent_token)
        return super().argv()

    def ready(self) -> bool:
        # Through to the upstream: nginx is up and its token is accepted.
        resp = http_request(self.url + "/v2/", timeout=1.0)
        return resp is not None and resp.status == 200

    def restart_fresh(self) -> None:
        if self.running:
            self.stop()
        old = self.cache
        self.generation += 1
        shutil.rmtree(old, ignore_errors=True)
        self.start()

    def describe(self) -> dict[str, object]:
        return {
            "command": super().argv(),  # the conf as last written, token and all
            "site": self.site.replace(self.sent_token, "<pull token for the seeded repos>"),
        }

    def require_hit(self, path: str, headers: Mapping[str, str]) -> None:
        """Fail unless nginx answers `path` with `headers` from its cache (asked with HEAD,
        which nginx answers from the entry a GET would use)."""
        resp = http_request(self.url + path, method="HEAD", headers=headers)
        cached = None if resp is None else resp.headers.get(CACHE_STATUS)
        if resp is None or resp.status != 200 or cached != "HIT":
            raise RuntimeError(
                f"nginx does not serve {path} from its cache: "
                f"{'no answer' if resp is None else resp.status}, {CACHE_STATUS} {cached!r}"
            )
