"""Client authentication for one application: its parts, built from the configuration,
and how they are added to the application."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import web

from mirror.config import Config
from mirror.server.auth.credentials import TOKEN_PATH, Challenges
from mirror.server.auth.endpoint import TokenEndpoint
from mirror.server.auth.logins import Logins
from mirror.server.auth.middleware import AuthMiddleware, anonymous_reads_only
from mirror.server.auth.policy import Policy
from mirror.server.auth.throttle import Throttle
from mirror.server.auth.tokens import Tokens, signing_key
from mirror.server.htpasswd import Passwords
from mirror.upstream.routing import Router

log = logging.getLogger(__name__)


class ClientAuth:
    """Authentication for one application: its middleware and its token endpoint."""

    def __init__(
        self, config: Config, router: Router, *, clock: Callable[[], float] = time.time
    ) -> None:
        assert config.auth.htpasswd is not None
        self.passwords = Passwords(config.auth.htpasswd, clock=clock)
        self.logins = Logins(
            self.passwords, Throttle(clock=clock), trusted_proxies=config.auth.trusted_proxies
        )
        policy = Policy(config.auth.auth_rules, config.auth.auth_groups)
        tokens = Tokens(signing_key(config), config.auth.token_ttl, clock=clock)
        challenges = Challenges(config.auth.auth_realm, str(config.serving.listen))
        self.middleware = AuthMiddleware(
            self.logins, tokens, policy, challenges, metrics_auth=config.auth.metrics_auth
        )
        self.endpoint = TokenEndpoint(self.logins, tokens, policy, router, challenges)

    def register(self, app: web.Application) -> None:
        app.router.add_get(TOKEN_PATH, self.endpoint.token, name="token")
        app.router.add_post(TOKEN_PATH, self.endpoint.token, name="token")
        app.middlewares.append(self.middleware.middleware)


CLIENT_AUTH = web.AppKey("mirror.client_auth", ClientAuth)


def setup(
    app: web.Application,
    config: Config,
    router: Router,
    *,
    clock: Callable[[], float] = time.time,
) -> ClientAuth | None:
    """Switch client authentication on for `app` if `htpasswd` is set; without it, refuse
    the anonymous clients every push and delete (of a hosted repository: nothing else
    takes them, so without `hosted` patterns there is nothing to guard, and no middleware
    to pass through). The middleware goes innermost: after the error middleware that
    renders its refusals as the spec's JSON, and after the one that resolves the request's
    repository (see `mirror.server.addressing`)."""
    if config.auth.htpasswd is None:
        if router.hosting.patterns:
            app.middlewares.append(anonymous_reads_only)
        return None
    auth = ClientAuth(config, router, clock=clock)
    auth.register(app)
    app[CLIENT_AUTH] = auth
    users = len(auth.passwords.users)
    rules = (
        f"{len(config.auth.auth_rules)} rules"
        if config.auth.auth_rules
        else "no rules: every user may pull, push and delete"
    )
    log.info("client authentication on: %d users from %s, %s", users, config.auth.htpasswd, rules)
    return auth
