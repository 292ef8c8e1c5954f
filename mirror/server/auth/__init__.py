"""Client authentication and authorisation: off unless `htpasswd` is set.

With it, every request but `/healthz` and `/readyz` (and `/metrics`, unless `metrics_auth`)
needs a user of the htpasswd file, given one of two ways:

- **Basic** credentials on the request itself (curl, Prometheus, a browser on the status
  page, a client configured with them up front);
- a **Bearer token** the mirror issued at its own realm, `/auth/token`, in exchange for
  Basic credentials (`GET`) or a password grant form (`POST`, the OAuth2 variant). That is
  the Docker token flow: a registry route without credentials answers `401` with
  `WWW-Authenticate: Bearer realm=".../auth/token",service="...",
  scope="repository:<name>:pull"` (`pull,push` for a push), the client fetches a token
  there and retries with it. `docker login mirror:5000` is this flow against `GET /v2/`
  (its token has no scope and needs none there). Other routes (the status page,
  `/metrics`) challenge with `Basic`, which browsers and Prometheus answer.

Tokens are JWTs (HS256) naming the user and the scopes granted when they were issued
(`tokens`): of the actions asked, those the rules allow. Authorisation is decided at every
use, from the user, the action the request needs (pull, push or delete, from its method
and path: `actions`) and the repository it addresses (resolved once per request like the
request itself, so `?ns=` and path prefixes count; see `mirror.server.addressing`): the
first `auth_rules` entry matching user, upstream and repository decides, its access
implying the lesser ones (pull < push < delete); none matching denies; no rules at all let
every user do everything (`policy`). So tokens issued before a restart with changed rules
obey the new rules, and a user removed from the htpasswd file (which is re-read when it
changes) loses access at once, tokens and all. A push or delete also needs its action in
the token, as registries do: one without gets `401` with `error="insufficient_scope"`, so
the client fetches a token that has it. Refusals are the spec's JSON errors: `401
UNAUTHORIZED` with a challenge naming the scope needed, `403 DENIED` (final) for a user
the rules refuse, and `429 TOOMANYREQUESTS` with `Retry-After` for a client address whose
passwords keep failing (`throttle`). Without `htpasswd` every client is anonymous and
never pushes or deletes (`403`).

Credentials and tokens are never logged; the access line names the user.

The parts: `policy` (rules -> allowed actions), `actions` (request -> action needed),
`tokens` (signing and checking, the key),
`throttle` (per-address back-off), `credentials` (headers and challenges), `logins`
(password checks behind the throttle), `middleware` (who and whether), `endpoint`
(`/auth/token`), `client_auth` (building them from the configuration).
"""

from mirror.server.auth.client_auth import CLIENT_AUTH, ClientAuth, setup
from mirror.server.auth.credentials import TOKEN_PATH
from mirror.server.auth.middleware import CATALOG_FILTER, may_pull

__all__ = ["CATALOG_FILTER", "CLIENT_AUTH", "TOKEN_PATH", "ClientAuth", "may_pull", "setup"]
