"""Tag lists: the upstream's whole `tags/list` of a repository, cached briefly and served
stale when the upstream fails, paged by the mirror itself.

`n` and `last` are the client's to choose: caching each combination the upstream was asked
would let a client fill the metadata store with entries kept for days. So the mirror asks
for the whole list (following the upstream's own pagination, within `MAX_TAG_PAGES` and the
client's size cap), keeps one entry per repository, and answers every page from it, the way
distribution does: tags in lexical order, those after `last`, at most `n`, with a `Link` to
the next page.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from mirror import errors
from mirror.config import Config
from mirror.errors import RegistryError
from mirror.meta.store import CachedResponse, CachedResponses
from mirror.upstream.client import MAX_TAGS_BYTES, UpstreamError
from mirror.upstream.routing import UpstreamRepo

log = logging.getLogger(__name__)

# The whole list stays in the store this long after its freshness ends, to be served stale.
KEEP_STALE_SECONDS = 7 * 24 * 3600
# Pages of an upstream that paginates on its own, followed at most (and MAX_TAGS_BYTES in all).
MAX_TAG_PAGES = 100


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
        """One page (`n`, `last` as validated by the route) of the repository's tags, from
        the cached whole list while it is fresh."""
        key = f"tags:{repo.qualified}"
        wanted = dict(query)
        cached = await self._meta.get_response(key)
        if cached is not None and self._clock() - cached.stored_at < self._ttl:
            return _page(repo, cached, wanted)
        if self._offline:
            if cached is not None:
                return _page(repo, cached, wanted, stale="the mirror is offline")
            raise RegistryError(
                errors.NAME_UNKNOWN, "tag list not cached, and the mirror is offline"
            )
        try:
            body = await _whole_list(repo)
        except UpstreamError as exc:
            if cached is None:
                raise
            log.warning("serving tag list of %s stale: %s", repo.qualified, exc)
            return _page(repo, cached, wanted, stale=str(exc))
        stored = CachedResponse(body=body, headers={}, stored_at=self._clock())
        await self._meta.put_response(key, stored, keep_for=self._ttl + KEEP_STALE_SECONDS)
        return _page(repo, stored, wanted)


async def _whole_list(repo: UpstreamRepo) -> bytes:
    """Every tag the upstream lists, as `{"name": ..., "tags": [...]}` in lexical order."""
    name, tags, size = repo.name, set[str](), 0
    query: list[tuple[str, str]] = []
    for _ in range(MAX_TAG_PAGES):
        got = await repo.upstream.get_tags(repo.name, query, credential=repo.credential)
        size += len(got.body)
        if size > MAX_TAGS_BYTES:
            break
        name, listed = _parse(repo, got.body)
        tags.update(listed)
        query = _next_query(got.link)
        if not query:
            return json.dumps({"name": name, "tags": sorted(tags)}).encode()
    raise UpstreamError(
        errors.UPSTREAM_BAD_GATEWAY,
        f"upstream {repo.upstream.name} lists more tags for {repo.name} than the mirror "
        f"keeps ({MAX_TAG_PAGES} pages, {MAX_TAGS_BYTES} bytes)",
    )


def _parse(repo: UpstreamRepo, body: bytes) -> tuple[str, list[str]]:
    bad = UpstreamError(
        errors.UPSTREAM_BAD_GATEWAY,
        f"upstream {repo.upstream.name} sent a tag list the mirror cannot read",
    )
    try:
        document: Any = json.loads(body)
    except (ValueError, RecursionError):
        raise bad from None
    if not isinstance(document, dict):
        raise bad
    tags = document.get("tags") or []  # distribution says null for none
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise bad
    name = document.get("name")
    return name if isinstance(name, str) else repo.name, tags


def _next_query(link: str | None) -> list[tuple[str, str]]:
    """The query of the upstream's next page, if it links one: all of it, for the
    upstream's paging is its own (quay pages by an opaque `next_page`, not by `last`; kept
    to `n` and `last`, its first page was asked for again until the page cap, a 502)."""
    if not link:
        return []
    target = link.split(";", 1)[0].strip().strip("<>")
    return parse_qsl(urlsplit(target).query)


def _page(
    repo: UpstreamRepo, cached: CachedResponse, wanted: dict[str, str], *, stale: str | None = None
) -> TagsAnswer:
    """distribution's paging over the whole list."""
    if not wanted:
        return TagsAnswer(cached.body, None, stale)
    document = json.loads(cached.body)  # the mirror's own writing
    tags: list[str] = document["tags"]
    if (last := wanted.get("last")) is not None:
        tags = [tag for tag in tags if tag > last]
    link = None
    if (n_text := wanted.get("n")) is not None:
        n = int(n_text)
        if 0 < n < len(tags):
            more = urlencode({"n": n, "last": tags[n - 1]})
            link = f'</v2/{repo.name}/tags/list?{more}>; rel="next"'
        tags = tags[:n]
    body = json.dumps({"name": document["name"], "tags": tags}).encode()
    return TagsAnswer(body, link, stale)
