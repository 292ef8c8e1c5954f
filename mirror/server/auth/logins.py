"""Password checks: the htpasswd file's answer, behind the per-client back-off.

bcrypt is slow on purpose, so its runs get threads of their own (`PASSWORD_CHECK_THREADS`):
a flood of logins queues there and never takes the default executor's threads, which
metadata reads and commits use. Failures are counted per client: its address, or with
`trusted_proxies` set and the request coming from one of them, the address its
`X-Forwarded-For` names; IPv6 clients by their /64 (see `server.clients`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from mirror import errors, metrics, observe
from mirror.errors import RegistryError
from mirror.server.auth.credentials import unauthorized
from mirror.server.auth.throttle import Throttle
from mirror.server.clients import client_address, client_key, networks
from mirror.server.htpasswd import Passwords

log = logging.getLogger(__name__)

PASSWORD_CHECK_THREADS = 2
# One pool for the process (every application in it): bcrypt is CPU-bound, more threads
# than this would only take cores from serving.
_PASSWORD_CHECKS = ThreadPoolExecutor(PASSWORD_CHECK_THREADS, thread_name_prefix="bcrypt")


class Logins:
    """Checks a user's password for a request, counting failures by client address."""

    def __init__(
        self, passwords: Passwords, throttle: Throttle, *, trusted_proxies: Sequence[str] = ()
    ) -> None:
        self.passwords = passwords
        self.throttle = throttle
        proxies = networks(trusted_proxies)
        # The key brute-force back-off is counted by (tests swap this).
        self.client_key: Callable[[web.Request], str] = lambda request: client_key(
            client_address(request, proxies)
        )

    async def check(
        self, request: web.Request, decoded: tuple[str, str] | None, challenge: str
    ) -> str:
        """The user if `decoded` (user, password) is right; else 401, or 429 for an address
        whose logins keep failing (checked first: a blocked address's passwords are not
        even looked at)."""
        client = self.client_key(request)
        if (wait := self.throttle.retry_after(client)) is not None:
            metrics.AUTH_FAILURES.labels("throttled").inc()
            seconds = max(1, math.ceil(wait))
            raise RegistryError(
                errors.TOOMANYREQUESTS,
                f"too many failed logins from this address; try again in {seconds} s",
                headers={"Retry-After": str(seconds)},
            )
        if decoded is not None and await self.passwords.check(
            *decoded, guard=lambda: self.throttle.checking(client), executor=_PASSWORD_CHECKS
        ):
            return decoded[0]
        metrics.AUTH_FAILURES.labels("credentials").inc()
        self._failed(client, decoded)
        raise unauthorized("wrong user name or password", challenge)

    def _failed(self, client: str, decoded: tuple[str, str] | None) -> None:
        # A name that is no user is not logged: it may be a password typed in the wrong box.
        known = decoded is not None and self.passwords.has_user(decoded[0])
        who = f"user {decoded[0]!r}" if known and decoded is not None else "an unknown user"
        log.warning("failed login for %s from %s", who, client)
        if (backoff := self.throttle.failed(client)) is not None:
            log.warning("repeated failed logins from %s: refusing them for %g s", client, backoff)


def record_user(user: str) -> None:
    """Name the user in the request's access line (never its credentials)."""
    if (record := observe.current_request()) is not None:
        record.user = user
