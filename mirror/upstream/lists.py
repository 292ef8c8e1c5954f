"""Small, mutable upstream JSON answers (tag lists, referrers indexes), kept through
aiohttp-client-cache in the metadata store's own Redis (under its key prefix) or, without
one, an SQLite file in the data dir, so replicas on one Redis share them.

An answer is served from there while it is fresh (`tags_list_ttl`), asked for again after,
and served stale when asking fails (the upstream down, unreachable, erroring, rate limiting)
or the mirror is offline; it is kept `KEEP_STALE_SECONDS` past its freshness for that. An
upstream's refusal (401/403) and a tag list's 404 are answers, never papered over with a
stale copy. Kept are 200s and the 404 of a referrers API an upstream does not have (which
says "use the fallback tag", an answer as lasting as a list).

Only the paths that hand an answer to `ListCache.get` (tag lists, referrers) use it: blobs and
manifests are content-addressed, verified and stored by the mirror itself, never by an HTTP
cache.

Entries are keyed by upstream, path, query and whose credential asked (the mirror's own, or
a passthrough client's keyed hash, which never leaves its process), never by a secret, so a
list one credential may read is never served to another. The library's default serializer
is pickle, which would let anyone able to write to a shared Redis run code in every replica:
entries are JSON instead, holding the body and the headers the mirror reads, never the
request's (they carry tokens).
"""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any

from aiohttp_client_cache.backends.base import CacheBackend
from aiohttp_client_cache.backends.redis import RedisBackend
from aiohttp_client_cache.backends.sqlite import SQLiteBackend
from aiohttp_client_cache.response import CachedResponse
from redis.exceptions import RedisError
from yarl import URL

from mirror import errors
from mirror.errors import RegistryError
from mirror.upstream.credentials import ClientCredential
from mirror.upstream.failures import UpstreamError

log = logging.getLogger(__name__)

# An answer stays this long after its freshness ends, to be served stale.
KEEP_STALE_SECONDS = 7 * 24 * 3600
# Without Redis, the answers live in this file in the data dir (beside the metadata store's).
SQLITE_FILE = "lists.sqlite3"
# The answers' name in Redis, after the configured key prefix (`mirror:lists:responses`).
REDIS_NAME = "lists"
# How often the server removes the answers past their keeping.
PRUNE_INTERVAL_SECONDS = 3600
# The answers kept: a list, or a referrers API the upstream does not have.
KEPT_STATUSES = (200, 404)
# What of an answer is kept: the rest is the upstream's business.
_KEPT_HEADERS = ("Content-Type", "Link")
# An upstream refusing the credential is an answer, not a failure to answer.
_REFUSALS = frozenset({errors.DENIED.code, errors.UNAUTHORIZED.code})
# What losing the store looks like (it must never fail a request): Redis, SQLite (also
# "database is locked" from another worker), the disk, an entry that is not JSON (the
# library itself answers nothing kept for the other ways an entry fails to read back).
_STORE_FAILURES = (RedisError, sqlite3.Error, OSError, ValueError)


@dataclass(frozen=True)
class ListAnswer:
    """An upstream's JSON answer: its body, the `Link` to its next page, why it is served
    stale (None: fresh), its status (200, or 404 for a referrers API the upstream lacks)
    and its `Content-Type` (clients tell a referrers API by its exact type)."""

    body: bytes
    link: str | None
    stale: str | None = None
    status: int = 200
    media_type: str = "application/json"


class ListCache:
    """The kept answers, over one aiohttp-client-cache backend (shared by every upstream)."""

    def __init__(
        self,
        backend: CacheBackend,
        *,
        ttl: float,
        offline: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._backend = backend
        self._ttl = ttl
        self._offline = offline
        self._clock = clock

    @classmethod
    def open(
        cls,
        *,
        redis_url: str | None,
        key_prefix: str,
        data_dir: Path,
        ttl: float,
        offline: bool,
        clock: Callable[[], float] = time.time,
    ) -> ListCache:
        """The backend beside the metadata store: its Redis, else SQLite in `data_dir`.
        Connects on first use."""
        settings: dict[str, Any] = {
            "expire_after": timedelta(seconds=ttl + KEEP_STALE_SECONDS),
            "allowed_codes": KEPT_STATUSES,
            "allowed_methods": ("GET",),
            "serializer": JsonEntries(),
        }
        backend: CacheBackend
        if redis_url:
            backend = RedisBackend(f"{key_prefix}{REDIS_NAME}", redis_url, **settings)
        else:
            data_dir.mkdir(parents=True, exist_ok=True)
            backend = SQLiteBackend(str(data_dir / SQLITE_FILE), **settings)
        return cls(backend, ttl=ttl, offline=offline, clock=clock)

    def key(
        self,
        host: str,
        url: str,
        query: Sequence[tuple[str, str]],
        credential: ClientCredential | None,
    ) -> str:
        """The entry of `url` + `query` on the upstream `host`, as `credential` sees it."""
        who = "mirror" if credential is None else f"client {credential.key}"
        return f"{host} {who} {self._backend.create_key('GET', url, params=list(query))}"

    async def get(
        self, key: str, url: str, fetch: Callable[[], Awaitable[ListAnswer]]
    ) -> ListAnswer:
        """The answer kept under `key` while fresh; else `fetch`ed from the upstream (at
        `url`) and kept; the kept one, stale, when that fails or the mirror is offline.

        Raises what `fetch` raises when nothing is kept (NAME_UNKNOWN offline)."""
        kept = await self._read(key)
        if kept is not None and self._clock() - _timestamp(kept.created_at) < self._ttl:
            return _answer(kept)
        if self._offline:
            if kept is None:
                raise RegistryError(errors.NAME_UNKNOWN, "not cached, and the mirror is offline")
            return _answer(kept, stale="the mirror is offline")
        try:
            answer = await fetch()
        except UpstreamError as exc:
            if kept is None or exc.error.code in _REFUSALS:
                raise
            log.warning("serving %s stale: %s", url, exc)
            return _answer(kept, stale=str(exc))
        await self._write(key, url, answer)
        return answer

    async def prune(self) -> None:
        """Remove the answers past their keeping (the backends never expire them)."""
        try:
            await self._backend.delete_expired_responses()
        except _STORE_FAILURES as exc:
            log.warning("could not prune kept upstream lists: %s", exc)

    async def close(self) -> None:
        await self._backend.close()

    async def _read(self, key: str) -> CachedResponse | None:
        try:
            return await self._backend.get_response(key)
        except _STORE_FAILURES as exc:
            log.warning("could not read a kept upstream list: %s", exc)
            return None

    async def _write(self, key: str, url: str, answer: ListAnswer) -> None:
        now = datetime.fromtimestamp(self._clock(), UTC).replace(tzinfo=None)
        headers = [("Content-Type", answer.media_type)]
        if answer.link is not None:
            headers.append(("Link", answer.link))
        response = _response(url, answer, headers, now, self._backend)
        if not await self._backend.is_cacheable(response):
            return
        try:
            await self._backend.responses.write(key, response)
        except _STORE_FAILURES as exc:
            log.warning("could not keep an upstream list: %s", exc)


class JsonEntries:
    """The backends' serializer: an entry as JSON (status, url, kept headers, body, times),
    never pickle."""

    def dumps(self, item: object) -> bytes:
        if not isinstance(item, CachedResponse):
            raise TypeError(f"only responses are kept, not {type(item).__name__}")
        entry = {
            "status": item.status,
            "url": str(item.url),
            "headers": [[k, v] for k, v in item.headers.items() if k in _KEPT_HEADERS],
            "body": base64.b64encode(item._body or b"").decode(),
            "created_at": item.created_at.isoformat(),
            "expires": None if item.expires is None else item.expires.isoformat(),
        }
        return json.dumps(entry).encode()

    def loads(self, data: bytes) -> CachedResponse:
        """Raises ValueError, TypeError or KeyError for what is not an entry (the backend
        then answers nothing kept)."""
        entry = json.loads(data)
        expires = entry["expires"]
        return CachedResponse(
            method="GET",
            reason=HTTPStatus(int(entry["status"])).phrase,
            status=int(entry["status"]),
            url=URL(entry["url"]),
            version="1.1",
            body=base64.b64decode(entry["body"], validate=True),
            raw_headers=tuple((k.encode(), v.encode()) for k, v in entry["headers"]),
            created_at=datetime.fromisoformat(entry["created_at"]),
            expires=None if expires is None else datetime.fromisoformat(expires),
        )


def _response(
    url: str,
    answer: ListAnswer,
    headers: Sequence[tuple[str, str]],
    now: datetime,
    backend: CacheBackend,
) -> CachedResponse:
    """An answer from `url` as the library keeps it: created now (by the mirror's clock,
    which freshness is measured with), expiring when its keeping ends (by the wall clock,
    which the library prunes with)."""
    return CachedResponse(
        method="GET",
        reason=HTTPStatus(answer.status).phrase,
        status=answer.status,
        url=URL(url),
        version="1.1",
        body=answer.body,
        raw_headers=tuple((k.encode(), v.encode()) for k, v in headers),
        created_at=now,
        expires=backend.create_cache_actions("", url).expires,
    )


def _answer(kept: CachedResponse, stale: str | None = None) -> ListAnswer:
    media_type = kept.headers.get("Content-Type", "application/json")
    return ListAnswer(kept._body or b"", kept.headers.get("Link"), stale, kept.status, media_type)


def _timestamp(naive_utc: datetime) -> float:
    return naive_utc.replace(tzinfo=UTC).timestamp()
