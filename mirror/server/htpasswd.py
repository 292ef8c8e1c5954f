"""The users clients log in as: an Apache-style htpasswd file of bcrypt entries.

`parse`/`load` validate the file (`check_file` runs before the mirror starts, so a bad
file stops it with the line it dislikes); `Passwords` checks a user's password against it
while serving. bcrypt is slow on purpose (tens to hundreds of milliseconds per check), so checks
run in a thread, concurrent checks of the same credentials share one run, and a successful
check is remembered for a short while: a client sending Basic credentials with each of the
thirty blob requests of a pull costs one bcrypt run, not thirty. The memory is keyed by a
keyed hash of user, password and stored hash (never the password itself), so a changed
password or a changed entry misses it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import bcrypt

from mirror.config import ConfigError, LoadedConfig

log = logging.getLogger(__name__)

# `$2y$` is what `htpasswd -B` writes; `$2a$`/`$2b$` what bcrypt libraries write.
_BCRYPT_RE = re.compile(r"\$2[aby]\$(?P<cost>\d\d)\$[./A-Za-z0-9]{53}")
MAX_PASSWORD_BYTES = 72  # bcrypt looks at no more than this; longer passwords are cut here
CACHE_SECONDS = 60.0  # how long a successful check is remembered
CACHE_ENTRIES = 1024


def _kind_of(hashed: str) -> str:
    """What a non-bcrypt hash is, for the error message."""
    if hashed.startswith("$apr1$"):
        return "an MD5 (apr1) hash"
    if hashed.startswith("{SHA}"):
        return "a SHA-1 hash"
    if hashed.startswith(("$5$", "$6$")):
        return "a SHA-crypt hash"
    if hashed.startswith("$2"):
        return "a malformed bcrypt hash"
    return "not a bcrypt hash (plain text or crypt?)"


def parse(text: str) -> dict[str, bytes]:
    """`user:hash` lines (blank lines and `#` comments skipped) -> user -> bcrypt hash.

    Raises ValueError naming the line for anything else: a line without `:`, an empty or
    repeated user, a hash that is not bcrypt (`htpasswd -B` makes bcrypt entries)."""
    users: dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        where = f"line {number}"
        if not sep or not user:
            raise ValueError(f"{where}: expected USER:BCRYPT-HASH")
        if user in users:
            raise ValueError(f"{where}: user {user!r} is listed twice")
        match = _BCRYPT_RE.fullmatch(hashed)
        if match is None:
            raise ValueError(
                f"{where}: user {user!r} has {_kind_of(hashed)}; only bcrypt entries are "
                "accepted (create them with `htpasswd -B`)"
            )
        if not 4 <= int(match["cost"]) <= 31:
            raise ValueError(f"{where}: user {user!r}: bcrypt cost must be 4 to 31")
        users[user] = hashed.encode()
    return users


def load(path: Path) -> dict[str, bytes]:
    """The users of the file at `path`; ValueError naming the file (and line) if unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    try:
        return parse(text)
    except ValueError as exc:
        raise ValueError(f"{path} {exc}") from None


def check_file(loaded: LoadedConfig) -> None:
    """The htpasswd file the config names is readable and holds bcrypt entries only; else
    a ConfigError naming the key, where its value came from and the line at fault."""
    path = loaded.config.auth.htpasswd
    if path is None:
        return
    try:
        load(path)
    except ValueError as exc:
        raise ConfigError(f"htpasswd (from {loaded.sources['htpasswd']}): {exc}") from None


def _password_bytes(password: str) -> bytes:
    return password.encode()[:MAX_PASSWORD_BYTES]


def _check(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # e.g. a NUL byte in the password
        return False


class Passwords:
    """Checks passwords against an htpasswd file, picking up changes to it by itself (an
    operator adds a user without restarting; a file broken meanwhile is logged and the
    users read before are kept)."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        self._path = path
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._key = secrets.token_bytes(32)  # keys the memory of successful checks
        self._verified: OrderedDict[bytes, float] = OrderedDict()  # key -> until
        self._running: dict[bytes, asyncio.Future[bool]] = {}
        try:
            stat = path.stat()
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
        # (mtime, size) of the file as last read; None while it cannot be read
        self._stamp: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        self._users = load(path)  # ValueError if unusable (the config layer checked it)
        self._dummy = _dummy_hash(self._users)

    @property
    def users(self) -> frozenset[str]:
        self._reload()
        return frozenset(self._users)

    def has_user(self, user: str) -> bool:
        self._reload()
        return user in self._users

    async def check(
        self,
        user: str,
        password: str,
        *,
        guard: Callable[[], AbstractContextManager[None]] = nullcontext,
        executor: Executor | None = None,
    ) -> bool:
        """True if `password` is `user`'s. An unknown user costs a bcrypt run too, so the
        answer's timing does not tell which users exist. `guard()` is held around each
        bcrypt run this call starts (not around runs it joins or answers it remembers).
        Runs go to `executor` (default: asyncio's)."""
        self._reload()
        hashed = self._users.get(user)
        loop = asyncio.get_running_loop()
        if hashed is None:
            with guard():
                await loop.run_in_executor(executor, _check, _password_bytes(password), self._dummy)
            return False
        key = hmac.digest(
            self._key, b"\0".join((user.encode(), password.encode(), hashed)), hashlib.sha256
        )
        now = self._clock()
        until = self._verified.get(key)
        if until is not None and now < until:
            self._verified.move_to_end(key)
            return True
        running = self._running.get(key)
        if running is None:
            held = guard()
            held.__enter__()  # now, not when the run starts: a burst sees it at once
            running = loop.run_in_executor(executor, _check, _password_bytes(password), hashed)
            self._running[key] = running

            def done(_: asyncio.Future[bool]) -> None:
                self._running.pop(key, None)
                held.__exit__(None, None, None)

            running.add_done_callback(done)
        ok = await asyncio.shield(running)
        if ok:
            self._remember(key)
        return ok

    def _remember(self, key: bytes) -> None:
        self._verified[key] = self._clock() + self._cache_seconds
        self._verified.move_to_end(key)
        while len(self._verified) > CACHE_ENTRIES:
            self._verified.popitem(last=False)

    def _reload(self) -> None:
        """Read the file again if it changed since it was last read; a file that went
        missing or broke is logged (once) and the users read before are kept."""
        try:
            stat = self._path.stat()
        except OSError as exc:
            if self._stamp is not None:
                log.error("cannot read htpasswd file %s (keeping its users): %s", self._path, exc)
                self._stamp = None
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            users = load(self._path)
        except ValueError as exc:
            log.error("htpasswd file changed but is unusable (keeping its users): %s", exc)
            return
        log.info("htpasswd file %s reloaded: %d users", self._path, len(users))
        self._users = users
        self._verified.clear()
        self._dummy = _dummy_hash(users)


def _dummy_hash(users: dict[str, bytes]) -> bytes:
    """A well-formed hash no password matches, as costly as the file's entries."""
    cost = max((int(h[4:6]) for h in users.values()), default=10)
    return f"$2b${cost:02d}$".encode() + b"." * 53
