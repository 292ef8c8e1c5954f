"""Tag lists: the upstream's whole `tags/list` of a repository, paged by the mirror itself.

`n` and `last` are the client's to choose: keeping an answer for each combination the
upstream was asked would let a client fill the metadata store with entries kept for days.
So the mirror asks for the whole list (following the upstream's own pagination, within
`MAX_TAG_PAGES` and the client's size cap), each page of it kept (fresh briefly, stale when
the upstream fails) by the upstream client's list cache, and answers every page from it,
the way distribution does: tags in lexical order, those after `last`, at most `n`, with a
`Link` to the next page.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from mirror import errors
from mirror.upstream.client import MAX_TAGS_BYTES, UpstreamError
from mirror.upstream.routing import UpstreamRepo

# Pages of an upstream that paginates on its own, followed at most (and MAX_TAGS_BYTES in all).
MAX_TAG_PAGES = 100


@dataclass(frozen=True)
class TagsAnswer:
    body: bytes
    link: str | None
    stale: str | None = None


@dataclass(frozen=True)
class _WholeList:
    name: str
    tags: list[str]  # in lexical order
    stale: str | None  # why a page of it was served stale, if one was


class TagLists:
    """Pages of repositories' tag lists, for the `tags/list` route."""

    async def page(self, repo: UpstreamRepo, query: Sequence[tuple[str, str]]) -> TagsAnswer:
        """One page (`n`, `last` as validated by the route) of the repository's tags."""
        whole = await _whole_list(repo)
        return _page(repo, whole, dict(query))


async def _whole_list(repo: UpstreamRepo) -> _WholeList:
    """Every tag the upstream lists."""
    name, tags, size, stale = repo.name, set[str](), 0, None
    query: list[tuple[str, str]] = []
    for _ in range(MAX_TAG_PAGES):
        got = await repo.upstream.get_tags(repo.name, query, credential=repo.credential)
        size += len(got.body)
        if size > MAX_TAGS_BYTES:
            break
        name, listed = _parse(repo, got.body)
        tags.update(listed)
        stale = stale or got.stale
        query = next_query(got.link)
        if not query:
            return _WholeList(name, sorted(tags), stale)
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


def next_query(link: str | None) -> list[tuple[str, str]]:
    """The query of the upstream's next page, if it links one (tag lists, referrers): all
    of it, for the upstream's paging is its own (quay pages by an opaque `next_page`, not
    by `last`; kept to `n` and `last`, its first page was asked for again until the page
    cap, a 502)."""
    if not link:
        return []
    target = link.split(";", 1)[0].strip().strip("<>")
    return parse_qsl(urlsplit(target).query)


def _page(repo: UpstreamRepo, whole: _WholeList, wanted: dict[str, str]) -> TagsAnswer:
    """distribution's paging over the whole list."""
    tags = whole.tags
    if (last := wanted.get("last")) is not None:
        tags = [tag for tag in tags if tag > last]
    link = None
    if (n_text := wanted.get("n")) is not None:
        n = int(n_text)
        if 0 < n < len(tags):
            more = urlencode({"n": n, "last": tags[n - 1]})
            link = f'</v2/{repo.name}/tags/list?{more}>; rel="next"'
        tags = tags[:n]
    body = json.dumps({"name": whole.name, "tags": tags}).encode()
    return TagsAnswer(body, link, whole.stale)
