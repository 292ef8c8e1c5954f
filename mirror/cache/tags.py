"""Tag lists: a short-lived cache of the upstream's `tags/list` pages, served stale when the
upstream fails, and the catalog of repositories the mirror holds."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from mirror import errors
from mirror.config import Config
from mirror.errors import RegistryError
from mirror.meta.store import CachedResponse, CachedResponses
from mirror.upstream.client import UpstreamError
from mirror.upstream.routing import UpstreamRepo

log = logging.getLogger(__name__)

# Pages stay in the store this long after their freshness ends, to be served stale.
KEEP_STALE_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class TagsAnswer:
    body: bytes
    link: str | None
    stale: str | None = None


class TagListCache:
    def __init__(
        self,
        meta: CachedResponses,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._meta = meta
        self._ttl = config.freshness.tags_list_ttl
        self._offline = config.freshness.offline
        self._clock = clock

    async def page(self, repo: UpstreamRepo, query: Sequence[tuple[str, str]]) -> TagsAnswer:
        """One page of the repository's tags, from the cache while fresh."""
        key = f"tags:{repo.qualified}?{urlencode(list(query))}"
        cached = await self._meta.get_response(key)
        if cached is not None and self._clock() - cached.stored_at < self._ttl:
            return _answer(cached)
        if self._offline:
            if cached is not None:
                return _answer(cached, stale="the mirror is offline")
            raise RegistryError(
                errors.NAME_UNKNOWN, "tag list not cached, and the mirror is offline"
            )
        try:
            page = await repo.upstream.get_tags(repo.name, query, credential=repo.credential)
        except UpstreamError as exc:
            if cached is None:
                raise
            log.warning("serving tag list of %s stale: %s", repo.qualified, exc)
            return _answer(cached, stale=str(exc))
        headers = {"Link": page.link} if page.link else {}
        stored = CachedResponse(body=page.body, headers=headers, stored_at=self._clock())
        await self._meta.put_response(key, stored, keep_for=self._ttl + KEEP_STALE_SECONDS)
        return _answer(stored)


def _answer(cached: CachedResponse, *, stale: str | None = None) -> TagsAnswer:
    return TagsAnswer(body=cached.body, link=cached.headers.get("Link"), stale=stale)
