"""Tag lists keep one stored entry per upstream page whatever `n` and `last` clients send: a
flood of random pages is answered from the one whole list, with no upstream request and no
new entry each."""

from __future__ import annotations

import random
from pathlib import Path

from testkit.fakeupstream import FakeRegistry, Fault, Manifest
from tests.conftest import StartMirror
from tests.kept_lists import kept_lists


async def test_a_flood_of_random_pages_leaves_one_stored_tag_list(
    start_mirror: StartMirror, upstream: FakeRegistry, alpine: Manifest, data_dir: Path
) -> None:
    tags = [f"v{n:03}" for n in range(50)]
    for tag in tags:
        upstream.tag("library/alpine", tag, alpine)
    mirror = await start_mirror(upstream.url)
    rng = random.Random(14)
    for _ in range(200):
        last = rng.choice("abcvxyz019") + "".join(rng.choices("abcxyz0123456789._-", k=11))
        n = rng.randint(0, 60)
        resp = await mirror.get(f"/v2/library/alpine/tags/list?n={n}&last={last}")
        assert resp.status == 200
        expected = sorted(t for t in [*tags, "3.19"] if t > last)[:n]
        assert (await resp.json())["tags"] == expected
    kept = list(await kept_lists({}, data_dir))
    assert len(kept) == 1 and kept[0].startswith("docker.io mirror "), kept
    asked = upstream.filter_requests(kind="tags")
    assert asked and all(r.query == {} for r in asked), "the whole list, asked for once"
    assert upstream.count(kind="tags", method="GET") <= 2  # the token dance's first try too


async def test_an_upstream_that_pages_by_itself_is_followed_to_the_end(
    start_mirror: StartMirror, upstream: FakeRegistry, alpine: Manifest
) -> None:
    """A registry that paginates unasked (a `Link` on the first answer): every page is
    read into the one list."""
    for n in range(5):
        upstream.tag("library/alpine", f"t{n}", alpine)
    link = '</v2/library/alpine/tags/list?n=2&last=t3>; rel="next"'
    upstream.add_fault(Fault("header", path_contains="/tags/list", headers={"Link": link}))
    mirror = await start_mirror(upstream.url)
    resp = await mirror.get("/v2/library/alpine/tags/list")
    assert (await resp.json())["tags"] == ["3.19", "t0", "t1", "t2", "t3", "t4"]
    assert "Link" not in resp.headers
    queries = [r.query for r in upstream.filter_requests(kind="tags")]
    assert queries[-1] == {"n": "2", "last": "t3"}, "the upstream's next page was read"


async def test_an_upstream_paging_by_its_own_token_is_followed_with_it(
    start_mirror: StartMirror, upstream: FakeRegistry, alpine: Manifest
) -> None:
    """quay's `Link` carries `n` and an opaque `next_page`, and no `last`: the next page is
    asked for with the link's whole query."""
    link = '</v2/library/alpine/tags/list?n=100&next_page=gAAAAABn>; rel="next"'
    upstream.add_fault(Fault("header", path_contains="/tags/list", headers={"Link": link}))
    mirror = await start_mirror(upstream.url)
    resp = await mirror.get("/v2/library/alpine/tags/list")
    assert resp.status == 200
    queries = [r.query for r in upstream.filter_requests(kind="tags") if r.status == 200]
    assert queries == [{}, {"n": "100", "next_page": "gAAAAABn"}]


async def test_n_and_last_are_applied_by_the_mirror_whatever_the_upstream_does(
    start_mirror: StartMirror, upstream: FakeRegistry, alpine: Manifest
) -> None:
    """The spec's paging, from the whole list in ASCII order: `n` caps the page (a `Link`
    to the next one while there is more, relative, keeping `ns`), `last` starts after that
    tag, `n=0` is an empty list with no `Link`."""
    for tag in ("b", "A", "c", "a"):
        upstream.tag("library/alpine", tag, alpine)
    mirror = await start_mirror(upstream.url)
    url = "/v2/library/alpine/tags/list"
    pages = {
        "": (["3.19", "A", "a", "b", "c"], None),
        "?n=2": (["3.19", "A"], f"<{url}?n=2&last=A>"),
        "?n=2&last=A": (["a", "b"], f"<{url}?n=2&last=b>"),
        "?n=2&last=b": (["c"], None),
        "?last=a": (["b", "c"], None),
        "?n=0": ([], None),
        "?n=0&last=a": ([], None),
        "?n=5": (["3.19", "A", "a", "b", "c"], None),
        "?n=1&ns=docker.io": (["3.19"], f"<{url}?n=1&last=3.19&ns=docker.io>"),
    }
    for query, (tags, link) in pages.items():
        resp = await mirror.get(url + query)
        assert resp.status == 200
        assert (await resp.json())["tags"] == tags, query
        expected = f'{link}; rel="next"' if link else None
        assert resp.headers.get("Link") == expected, query
    assert all(r.query == {} for r in upstream.filter_requests(kind="tags"))


async def test_a_flood_of_random_repository_names_stores_no_tag_list(
    start_mirror: StartMirror, upstream: FakeRegistry, data_dir: Path
) -> None:
    mirror = await start_mirror(upstream.url)
    rng = random.Random(6)
    for _ in range(50):
        name = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=10))
        resp = await mirror.get(f"/v2/nobody/{name}/tags/list?n=5")
        assert resp.status == 404
    assert await kept_lists({}, data_dir) == {}
