"""Client authentication and authorisation: off unless `htpasswd` is set.

With it, every request but `/healthz` and `/readyz` (and `/metrics`, unless `metrics_auth`)
needs a user of the htpasswd file, given one of two ways:

- **Basic** credentials on the request itself (curl, Prometheus, a browser on the status
  page, a client configured with them up front);
- a **Bearer token** the mirror issued at its own realm, `/auth/token`, in exchange for
  Basic credentials (`GET`) or a password grant form (`POST`, the OAuth2 variant). That is
  the Docker token flow: a registry route without credentials answers `401` with
  `WWW-Authenticate: Bearer realm=".../auth/token",service="...",
  scope="repository:<name>:pull"`, the client fetches a token there and retries with it.
  `docker login mirror:5000` is this flow against `GET /v2/`. Other routes (the status
  page, `/metrics`) challenge with `Basic`, which browsers and Prometheus answer.

Tokens are JWTs (HS256) naming the user and the scopes granted when they were issued
(`tokens`). Authorisation is decided at every use, from the user and the repository the
request addresses (resolved once per request like the request itself, so `?ns=` and path
prefixes count; see `mirror.server.addressing`): the first `auth_rules` entry matching
user, upstream and repository decides; none matching denies; no rules at all lets every
user pull everything (`policy`). So tokens issued before a restart with changed rules obey
the new rules, and a user removed from the htpasswd file (which is re-read when it
changes) loses access at once, tokens and all. Refusals are the spec's JSON errors: `401
UNAUTHORIZED` with a challenge, `403 DENIED`, and `429 TOOMANYREQUESTS` with `Retry-After`
for a client address whose passwords keep failing (`throttle`).

Credentials and tokens are never logged; the access line names the user.

The parts: `policy` (rules -> allowed?), `tokens` (signing and checking, the key),
`throttle` (per-address back-off), `credentials` (headers and challenges), `logins`
(password checks behind the throttle), `middleware` (who and whether), `endpoint`
(`/auth/token`), `client_auth` (building them from the configuration).
"""

from mirror.server.auth.client_auth import CLIENT_AUTH, ClientAuth, setup
from mirror.server.auth.credentials import TOKEN_PATH
from mirror.server.auth.middleware import CATALOG_FILTER, may_pull

__all__ = ["CATALOG_FILTER", "CLIENT_AUTH", "TOKEN_PATH", "ClientAuth", "may_pull", "setup"]
