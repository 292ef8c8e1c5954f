"""The status page at `/`, in a real headless Chromium: it renders exactly the numbers
`/api/status` reports, with no console errors, and says so visibly when it cannot load them.

The page keeps each displayed number's raw value in a `data-value` attribute (JSON) next to
its human-readable text; the tests compare both with the JSON the mirror answers.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from mirror import config
from mirror.server.app import create_app
from testkit.fakeupstream import FakeRegistry, Fault, Manifest, make_image, make_layer
from tests.chromium import Chromium, Page
from tests.clients import pull_like_docker
from tests.conftest import Client, StartMirror
from tests.runcli import run_cli

# Everything the page shows, as {"text", "value"} pairs: the value is the element's
# `data-value` parsed as JSON (null where the element has none).
PAGE_STATE = """(() => {
  const shown = (el) => ({
    text: el.textContent,
    value: el.dataset.value === undefined ? null : JSON.parse(el.dataset.value),
  });
  const fields = (row) => Object.fromEntries(
    [...row.querySelectorAll("[data-field]")].map((el) => [el.dataset.field, shown(el)]));
  const rows = (id) => [...document.querySelectorAll(`#${id} tr`)];
  const banner = document.getElementById("error-banner");
  return {
    loaded: document.body.dataset.loaded,
    state: document.body.dataset.state,
    banner: {hidden: banner.hidden, text: banner.textContent},
    ids: Object.fromEntries(
      [...document.querySelectorAll("[id][data-value]")].map((el) => [el.id, shown(el)])),
    upstreams: rows("upstreams").map((row) => ({host: row.dataset.host, ...fields(row)})),
    top: rows("top-repositories").map(fields),
    hosted: rows("hosted-repositories").map(fields),
    errors: rows("recent-errors").map(fields),
    emptyNotes: {
      top: !document.getElementById("top-repositories-empty").hidden,
      hosted: !document.getElementById("hosted-repositories-empty").hidden,
      moreHosted: !document.getElementById("hosted-repositories-more").hidden,
      errors: !document.getElementById("recent-errors-empty").hidden,
    },
  };
})()"""

# The page has rendered a status, or given up with its error banner.
SETTLED = "document.body !== null && document.body.dataset.state !== 'loading'"


# --- how the page writes numbers --------------------------------------------------------


def one_decimal(x: float) -> str:
    """Rounded half up to one decimal (the page does the same float arithmetic)."""
    return f"{math.floor(x * 10 + 0.5) / 10:.1f}"


def count(n: int) -> str:
    return f"{n:,}"


def human_bytes(n: int) -> str:
    """Binary units: 999 B, 1.5 KiB, 12.0 MiB, ..."""
    if n < 1024:
        return f"{count(n)} B"
    units = ["KiB", "MiB", "GiB", "TiB", "PiB"]
    value, unit = n / 1024, 0
    while value >= 1024 and unit < len(units) - 1:
        value /= 1024
        unit += 1
    return f"{one_decimal(value)} {units[unit]}"


def percent(ratio: float | None) -> str:
    return "\N{EN DASH}" if ratio is None else f"{one_decimal(ratio * 100)}%"


def utc_time(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(unix))


def shown(value: Any, text: str) -> dict[str, Any]:
    return {"value": value, "text": text}


# --- helpers ------------------------------------------------------------------------------


async def api_status(mirror: Client) -> dict[str, Any]:
    resp = await mirror.get("/api/status")
    assert resp.status == 200
    document: dict[str, Any] = await resp.json()
    return document


def steady(status: dict[str, Any]) -> dict[str, Any]:
    """The document without the clock, which moves between two reads."""
    return {k: v for k, v in status.items() if k != "uptime_seconds"}


@asynccontextmanager
async def status_page(tmp_path: Path, mirror: Client) -> AsyncIterator[Page]:
    """Chromium showing the mirror's `/`, once the page has rendered its first status.
    Times on the page are local; the browser's zone is UTC so the test knows them."""
    async with Chromium.launch(tmp_path / "chromium", env={"TZ": "UTC"}) as browser:
        page = await browser.new_page(width=1280, height=900)
        await page.navigate(str(mirror.make_url("/")))
        async with asyncio.timeout(10):
            await page.wait_until(SETTLED)
        banner = await page.evaluate("document.getElementById('error-banner').textContent")
        assert await page.evaluate("document.body.dataset.loaded") == "true", banner
        yield page


def assert_page_shows(page: dict[str, Any], status: dict[str, Any]) -> None:
    """Every number of `status` is on the page, raw and formatted."""
    assert page["loaded"] == "true"
    assert page["state"] == "ok"
    assert page["banner"]["hidden"] is True
    ids = page["ids"]
    requests, sent, cache = status["requests"], status["bytes"], status["cache"]
    assert ids["version"] == shown(status["version"], status["version"])
    assert ids["hit-ratio"] == shown(requests["hit_ratio"], percent(requests["hit_ratio"]))
    for key in ("total", "hits", "misses", "coalesced"):
        assert ids[f"requests-{key}"] == shown(requests[key], count(requests[key])), key
    for key in ("served", "from_cache", "from_upstream", "fetched_upstream", "saved"):
        name = "bytes-" + key.replace("_", "-")
        assert ids[name] == shown(sent[key], human_bytes(sent[key])), key
    assert ids["cache-total-bytes"] == shown(
        cache["total_bytes"], human_bytes(cache["total_bytes"])
    )
    for kind in ("blobs", "manifests"):
        objects, size = cache[kind]["objects"], cache[kind]["bytes"]
        assert ids[f"cache-{kind}-objects"] == shown(objects, f"{count(objects)} {kind}")
        assert ids[f"cache-{kind}-bytes"] == shown(size, human_bytes(size))

    assert [row["host"] for row in page["upstreams"]] == [u["host"] for u in status["upstreams"]]
    for row, upstream in zip(page["upstreams"], status["upstreams"], strict=True):
        host = upstream["host"]
        assert row["upstream-host"] == shown(host, host)
        assert row["upstream-url"] == shown(upstream["url"], upstream["url"])
        assert row["upstream-requests"] == shown(upstream["requests"], count(upstream["requests"]))
        assert row["upstream-errors"] == shown(upstream["errors"], count(upstream["errors"]))
        limit = upstream["ratelimit"]
        if limit is None:
            assert row["upstream-ratelimit"]["text"] == "no limit reported", host
            assert "upstream-remaining" not in row, host
        else:
            remaining, total = limit["remaining"], limit["limit"]
            assert row["upstream-remaining"] == shown(remaining, count(remaining)), host
            assert row["upstream-limit"] == shown(total, count(total)), host
            assert row["upstream-window"]["value"] == limit["window_seconds"], host
            assert row["upstream-ratelimit"]["text"].startswith(
                f"{count(remaining)} / {count(total)} left"
            ), host

    assert [(r["repository"]["value"], r["pulls"]["value"]) for r in page["top"]] == [
        (t["repository"], t["pulls"]) for t in status["top_repositories"]
    ]
    assert [r.get("hosted") == shown(True, "hosted") for r in page["top"]] == [
        t["hosted"] for t in status["top_repositories"]
    ]
    assert [(r["repository"]["text"], r["pulls"]["text"]) for r in page["top"]] == [
        (t["repository"], count(t["pulls"])) for t in status["top_repositories"]
    ]
    assert page["emptyNotes"]["top"] == (not status["top_repositories"])

    hosted = status["hosted"]
    patterns = ", ".join(hosted["patterns"]) or "nothing"
    assert ids["hosted-patterns"] == shown(hosted["patterns"], patterns)
    assert page["hosted"] == [
        {"repository": shown(name, name), "hosted": shown(True, "hosted")}
        for name in hosted["repositories"]
    ]
    assert page["emptyNotes"]["hosted"] == (not hosted["repositories"])
    assert page["emptyNotes"]["moreHosted"] == hosted["more"]

    assert page["errors"] == [
        {
            "error-time": shown(error["time"], utc_time(error["time"])),
            "error-upstream": shown(error["upstream"], error["upstream"]),
            "error-message": shown(error["message"], error["message"]),
        }
        for error in status["recent_errors"]
    ]
    assert page["emptyNotes"]["errors"] == (not status["recent_errors"])


# --- tests --------------------------------------------------------------------------------


async def test_the_page_renders_the_numbers_of_api_status_without_console_errors(
    mirror: Client, alpine: Manifest, tmp_path: Path
) -> None:
    for _ in range(2):  # a cold pull (misses) and a warm one (hits)
        await pull_like_docker(mirror, "library/alpine", "3.19")
    before = await api_status(mirror)
    assert before["requests"]["hits"] > 0 and before["requests"]["misses"] > 0
    assert "docker.io/library/alpine" in [t["repository"] for t in before["top_repositories"]]

    async with status_page(tmp_path, mirror) as page:
        state = await page.evaluate(PAGE_STATE)
        after = await api_status(mirror)
        problems = page.problems()

    assert steady(after) == steady(before), "loading the page changes no number"
    assert_page_shows(state, after)
    uptime = state["ids"]["uptime"]["value"]
    assert before["uptime_seconds"] <= uptime <= after["uptime_seconds"]
    assert problems == []


async def test_hosted_repositories_are_listed_and_their_pulls_marked_hosted(
    upstream: FakeRegistry, start_mirror: StartMirror, alpine: Manifest, tmp_path: Path
) -> None:
    mirror = await start_mirror(upstream.url, hosted=["local/*"])
    await pull_like_docker(mirror, "library/alpine", "3.19")
    config = str(tmp_path / "mirror.toml")
    promoted = await asyncio.to_thread(
        run_cli, "tag", "alpine:3.19", "local/base:approved", "--config", config, cwd=tmp_path
    )
    assert promoted.returncode == 0, promoted.stderr
    for _ in range(2):
        await pull_like_docker(mirror, "local/base", "approved")

    status = await api_status(mirror)
    assert status["hosted"] == {
        "patterns": ["local/*"],
        "repositories": ["local/base"],
        "more": False,
    }
    assert status["top_repositories"] == [
        {"repository": "local/base", "pulls": 2, "hosted": True},
        {"repository": "docker.io/library/alpine", "pulls": 1, "hosted": False},
    ]
    async with status_page(tmp_path, mirror) as page:
        state = await page.evaluate(PAGE_STATE)
        problems = page.problems()
    assert_page_shows(state, status)
    assert problems == []


async def test_rate_limits_and_recent_upstream_errors_are_shown(
    start_mirror: StartMirror, tmp_path: Path
) -> None:
    image = make_image(layers=[make_layer({"bin/busybox": b"#!fake busybox\n"})])
    async with FakeRegistry(ratelimit=(100, 77)) as hub:
        hub.push_image("library/busybox", "1.36", image)
        mirror = await start_mirror(hub.url)  # docker.io is `hub`; the other registries stay
        await pull_like_docker(mirror, "library/busybox", "1.36")
        hub.add_fault(Fault("status", status=500, path_contains="/missing/", times=None))
        assert (await mirror.get("/v2/team/missing/manifests/1")).status == 502
        status = await api_status(mirror)

        async with status_page(tmp_path, mirror) as page:
            state = await page.evaluate(PAGE_STATE)
            problems = page.problems()

    hub_row = next(u for u in status["upstreams"] if u["host"] == "docker.io")
    assert hub_row["ratelimit"] is not None
    assert any(u["ratelimit"] is None for u in status["upstreams"])
    assert status["recent_errors"] and status["recent_errors"][0]["upstream"] == "docker.io"
    assert_page_shows(state, status)

    docker_io = next(row for row in state["upstreams"] if row["host"] == "docker.io")
    limit = hub_row["ratelimit"]
    assert docker_io["upstream-remaining"]["value"] == limit["remaining"] < 100
    assert docker_io["upstream-limit"]["value"] == 100
    newest = state["errors"][0]
    assert newest["error-upstream"]["text"] == "docker.io"
    assert "500" in newest["error-message"]["text"]
    assert problems == []


async def test_a_failed_refresh_shows_a_banner_keeps_the_numbers_and_recovers(
    mirror: Client,
    alpine: Manifest,
    tmp_path: Path,
) -> None:
    await pull_like_docker(mirror, "library/alpine", "3.19")
    port = mirror.server.port
    async with status_page(tmp_path, mirror) as page:
        shown_before = await page.evaluate(PAGE_STATE)

        await mirror.server.close()  # the mirror goes away
        await page.evaluate("window.statusPage.refresh()", await_promise=True)
        failed = await page.evaluate(PAGE_STATE)
        problems_while_down = page.problems()

        # The mirror comes back on the same address, from the config file start_mirror wrote.
        loaded = config.load(config_file=tmp_path / "mirror.toml", environ={})
        app = await create_app(loaded.config)
        async with TestClient(TestServer(app, port=port)):
            await page.evaluate("window.statusPage.refresh()", await_promise=True)
            recovered = await page.evaluate(PAGE_STATE)
        problems = page.problems()

    assert failed["banner"]["hidden"] is False
    assert failed["banner"]["text"].startswith("Cannot load the mirror's status (api/status)")
    assert "Showing data from" in failed["banner"]["text"]
    assert failed["state"] == "error"
    assert failed["ids"] == shown_before["ids"], "the last numbers stay on the page"
    assert failed["upstreams"] == shown_before["upstreams"]

    # The browser logs the refused connection; nothing else went wrong, nothing was thrown.
    assert problems_while_down, "the browser saw the failed request"
    assert all(p.startswith("log (network)") and "/api/status" in p for p in problems_while_down)
    assert problems == problems_while_down

    assert recovered["banner"]["hidden"] is True
    assert recovered["state"] == "ok"
    assert recovered["ids"]["version"] == shown_before["ids"]["version"]
