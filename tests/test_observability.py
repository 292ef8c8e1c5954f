"""What operators see: Prometheus metrics, health and readiness, access-log lines with
request ids, and the status page's JSON."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import aiohttp
import bcrypt
import pytest

from mirror.logs import JsonFormatter
from mirror.server.middleware import route_label
from testkit.clock import FakeClock
from testkit.fakeupstream import FakeRegistry, Fault, Manifest, make_image, random_layer
from testkit.mirrorproc import MirrorProcess
from tests.clients import pull_like_docker
from tests.conftest import Client, StartMirror, files_under
from tests.meta_fixtures import RedisServer
from tests.scrape import Labels, delta, parse, scrape

# --- metrics --------------------------------------------------------------------------------


Samples = dict[tuple[str, Labels], float]

# What a cold pull of alpine (a manifest and three blobs) asks the fake Docker Hub.
COLD_PULL_UPSTREAM_REQUESTS = {
    ("HEAD", "manifest", "401"): 1,  # the challenge before the first token
    ("GET", "token", "200"): 1,
    ("HEAD", "manifest", "200"): 1,
    ("GET", "manifest", "200"): 1,
    ("GET", "blob", "307"): 3,  # the registry redirects each blob...
    ("GET", "blob", "200"): 3,  # ...to its CDN
}


async def test_a_cold_then_warm_pull_moves_exactly_these_counters(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest
) -> None:
    blob_bytes = sum(blob.size for blob in alpine.blobs)
    before = await scrape(mirror)

    await pull_like_docker(mirror, "library/alpine", "3.19")  # cold
    cold = await scrape(mirror)
    assert_cold_pull(cold, before, alpine, blob_bytes)
    assert len(upstream.requests) == sum(COLD_PULL_UPSTREAM_REQUESTS.values())

    await pull_like_docker(mirror, "library/alpine", "3.19")  # warm
    warm = await scrape(mirror)
    assert_warm_pull(warm, cold, blob_bytes)
    assert_both_pulls(warm, before, blob_bytes)


def assert_cold_pull(cold: Samples, before: Samples, alpine: Manifest, blob_bytes: int) -> None:
    """Misses for the tag, the manifest and each blob, all bytes from upstream, and exactly
    the upstream requests of COLD_PULL_UPSTREAM_REQUESTS."""
    assert delta(cold, before, "mirror_cache_misses_total", kind="tag") == 1
    assert delta(cold, before, "mirror_cache_misses_total", kind="manifest") == 1
    assert delta(cold, before, "mirror_cache_misses_total", kind="blob") == 3
    assert delta(cold, before, "mirror_cache_hits_total") == 0
    assert delta(cold, before, "mirror_cache_coalesced_total") == 0
    assert delta(cold, before, "mirror_served_bytes_total", source="upstream") == blob_bytes
    assert delta(cold, before, "mirror_served_bytes_total", source="cache") == 0
    assert (
        delta(cold, before, "mirror_upstream_bytes_total", upstream="docker.io")
        == blob_bytes + alpine.size
    )
    for (method, kind, status), count in COLD_PULL_UPSTREAM_REQUESTS.items():
        got = delta(
            cold,
            before,
            "mirror_upstream_requests_total",
            upstream="docker.io",
            method=method,
            kind=kind,
            status=status,
        )
        assert got == count, (method, kind, status)
    assert delta(cold, before, "mirror_upstream_requests_total") == sum(
        COLD_PULL_UPSTREAM_REQUESTS.values()
    )
    assert delta(cold, before, "mirror_upstream_request_duration_seconds_count") == sum(
        COLD_PULL_UPSTREAM_REQUESTS.values()
    )


def assert_warm_pull(warm: Samples, cold: Samples, blob_bytes: int) -> None:
    """Hits for everything, all bytes from the cache, nothing asked upstream."""
    assert delta(warm, cold, "mirror_cache_hits_total", kind="tag") == 1
    assert delta(warm, cold, "mirror_cache_hits_total", kind="manifest") == 1
    assert delta(warm, cold, "mirror_cache_hits_total", kind="blob") == 3
    assert delta(warm, cold, "mirror_cache_misses_total") == 0
    assert delta(warm, cold, "mirror_served_bytes_total", source="cache") == blob_bytes
    assert delta(warm, cold, "mirror_upstream_requests_total") == 0
    assert delta(warm, cold, "mirror_upstream_bytes_total") == 0


def assert_both_pulls(warm: Samples, before: Samples, blob_bytes: int) -> None:
    """Every request of both pulls, by route, method and status; and the cache's gauges."""
    for route, method, count in (
        ("manifest", "HEAD", 2),
        ("manifest", "GET", 2),
        ("blob", "GET", 6),
    ):
        got = delta(
            warm, before, "mirror_http_requests_total", route=route, method=method, status="200"
        )
        assert got == count, (route, method)
    assert delta(warm, before, "mirror_http_request_duration_seconds_count", route="blob") == 6
    assert warm[("mirror_cache_objects", frozenset({("kind", "blob")}))] == 3
    assert warm[("mirror_cache_size_bytes", frozenset({("kind", "blob")}))] == blob_bytes
    assert warm[("mirror_cache_objects", frozenset({("kind", "manifest")}))] == 1
    assert warm[("mirror_upstream_downloads_in_flight", frozenset())] == 0
    assert warm[("mirror_download_waiters", frozenset())] == 0


async def test_tag_revalidations_are_counted_by_result(
    start_mirror: StartMirror, upstream: FakeRegistry, alpine: Manifest
) -> None:
    clock = FakeClock()
    mirror = await start_mirror(upstream.url, clock=clock, tag_ttl=60)
    tag = "/v2/library/alpine/manifests/3.19"
    assert (await mirror.get(tag)).status == 200
    before = await scrape(mirror)

    clock.advance(61)
    assert (await mirror.get(tag)).status == 200  # the same digest upstream
    upstream.tag("library/alpine", "3.19", make_image(seed=5))
    clock.advance(61)
    assert (await mirror.get(tag)).status == 200  # moved
    upstream.add_fault(Fault("status", status=503, method="HEAD", times=None))
    clock.advance(61)
    assert (await mirror.get(tag)).status == 200  # the upstream fails: served stale

    after = await scrape(mirror)
    for result in ("unchanged", "changed", "stale"):
        assert delta(after, before, "mirror_tag_revalidations_total", result=result) == 1, result
    assert delta(after, before, "mirror_cache_misses_total", kind="tag") == 3


async def test_the_docker_hub_rate_limit_is_exported_per_upstream(
    start_mirror: StartMirror, alpine: Manifest
) -> None:
    async with FakeRegistry(ratelimit=(100, 77)) as hub:
        hub.push_image("library/alpine", "3.19", alpine)
        mirror = await start_mirror(hub.url)
        assert (await mirror.get("/v2/library/alpine/manifests/3.19")).status == 200
        samples = await scrape(mirror)
    upstream = frozenset({("upstream", "docker.io")})
    assert samples[("mirror_upstream_ratelimit_limit", upstream)] == 100
    assert samples[("mirror_upstream_ratelimit_remaining", upstream)] == 76


async def test_metrics_carry_no_repository_or_digest_labels(
    mirror: Client, alpine: Manifest
) -> None:
    await pull_like_docker(mirror, "library/alpine", "3.19")
    text = await (await mirror.get("/metrics")).text()
    assert "alpine" not in text
    assert "sha256" not in text


# The route labels the README's metrics table and the Grafana dashboard name.
ROUTE_LABELS = {
    *("ping", "manifest", "blob", "tags", "referrers", "catalog", "push", "token"),
    *("healthz", "readyz", "metrics", "status", "static", "cluster"),
}


async def test_requests_count_under_their_routes_documented_labels(
    start_mirror: StartMirror, upstream: FakeRegistry, tmp_path: Path
) -> None:
    """Every route counts under one of a fixed set of labels (a request no route takes
    under `other`), so the metrics stay bounded and the dashboard's legend true."""
    users = tmp_path / "htpasswd"
    users.write_text(f"alice:{bcrypt.hashpw(b'secret', bcrypt.gensalt(rounds=4)).decode()}\n")
    mirror = await start_mirror(upstream.url, htpasswd=str(users))  # with the token route
    assert {route_label(route) for route in mirror.app.router.routes()} == ROUTE_LABELS
    labelled = {
        "/v2": "ping",
        "/v2/": "ping",
        "/v2/_catalog": "catalog",
        "/v2/library/alpine/manifests/3.19": "manifest",
        "/v2/library/alpine/blobs/sha256:" + "a" * 64: "blob",
        "/v2/library/alpine/tags/list": "tags",
        "/v2/library/alpine/referrers/sha256:" + "b" * 64: "referrers",
        "/v2/library/alpine/blobs/uploads": "push",
        "/v2/library/alpine/blobs/uploads/a-session": "push",
        "/auth/token": "token",
        "/healthz": "healthz",
        "/readyz": "readyz",
        "/": "status",
        "/api/status": "status",
        "/static/app.js": "static",
        "/no/such/endpoint": "other",
    }
    before = await scrape(mirror)
    for path in labelled:
        await mirror.get(path)
    after = await scrape(mirror)
    expected = Counter(labelled.values()) + Counter({"metrics": 1})  # the first scrape
    for label in ROUTE_LABELS | {"other"}:
        counted = delta(after, before, "mirror_http_requests_total", route=label)
        assert counted == expected[label], label


async def test_workers_report_their_sum_whichever_answers_the_scrape(
    upstream: FakeRegistry, alpine: Manifest, data_dir: Path, tmp_path: Path
) -> None:
    proc = MirrorProcess(upstream.url, data_dir, cwd=tmp_path, workers="2")
    # A new connection per request, so the kernel spreads them over both workers.
    connector = aiohttp.TCPConnector(force_close=True)
    async with proc, aiohttp.ClientSession(connector=connector) as http:
        for _ in range(6):
            async with http.get(f"{proc.url}/v2/library/alpine/manifests/3.19") as resp:
                assert resp.status == 200
        scrapes = []
        for _ in range(6):
            async with http.get(f"{proc.url}/metrics") as resp:
                scrapes.append(parse(await resp.text()))
        lookups = [
            delta(samples, {}, "mirror_cache_hits_total", kind="tag")
            + delta(samples, {}, "mirror_cache_misses_total", kind="tag")
            for samples in scrapes
        ]
        assert lookups == [6] * 6
        assert all(
            delta(samples, {}, "mirror_http_requests_total", route="manifest") == 6
            for samples in scrapes
        )
        # The cache's size is the data dir's, counted by the worker that stored the manifest
        # and read by every worker alike.
        sizes = {
            delta(samples, {}, "mirror_cache_size_bytes", kind="manifest") for samples in scrapes
        }
        assert sizes == {len(alpine.data)}
        assert await proc.stop() == 0, proc.stderr


# --- health ---------------------------------------------------------------------------------


async def test_healthz_and_readyz_answer_when_all_is_well(mirror: Client) -> None:
    health = await mirror.get("/healthz")
    assert (health.status, await health.json()) == (200, {"status": "ok"})
    ready = await mirror.get("/readyz")
    assert ready.status == 200
    assert await ready.json() == {
        "status": "ready",
        "checks": {"data_dir": "ok", "meta_store": "ok"},
    }


async def test_readyz_is_503_naming_an_unwritable_data_dir(mirror: Client, data_dir: Path) -> None:
    shutil.rmtree(data_dir / "tmp")
    (data_dir / "tmp").write_text("not a directory any more")
    resp = await mirror.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["status"] == "not ready"
    assert body["checks"]["data_dir"].startswith("failed: ")
    assert body["checks"]["meta_store"] == "ok"
    assert (await mirror.get("/healthz")).status == 200  # alive, just not ready


async def test_readyz_is_503_naming_a_lost_redis(
    start_mirror: StartMirror, upstream: FakeRegistry, redis_server: RedisServer
) -> None:
    mirror = await start_mirror(upstream.url, redis_url=redis_server.url)
    assert (await mirror.get("/readyz")).status == 200
    await redis_server.stop()
    resp = await mirror.get("/readyz")
    assert resp.status == 503
    checks = (await resp.json())["checks"]
    assert checks["data_dir"] == "ok"
    assert checks["meta_store"].startswith("failed: ")


# --- access log -----------------------------------------------------------------------------


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [r.access for r in caplog.records if r.name == "mirror.access"]  # type: ignore[attr-defined]


async def test_one_access_line_per_request_with_cache_outcome_and_bytes(
    mirror: Client, alpine: Manifest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mirror.access")
    layer = alpine.layers[0]
    path = f"/v2/alpine/blobs/{layer.digest}"
    for _ in range(2):  # a miss, streamed while downloading; then a hit, sent from disk
        resp = await mirror.get(path)
        assert await resp.read() == layer.data
    assert (await mirror.get("/v2/alpine/manifests/3.19")).status == 200
    lines = access_lines(caplog)
    assert len(lines) == 3
    miss, hit, manifest = lines
    assert (miss["cache"], miss["bytes"], miss["status"]) == ("miss", layer.size, 200)
    assert (hit["cache"], hit["bytes"]) == ("hit", layer.size)
    assert (manifest["cache"], manifest["bytes"]) == ("miss", alpine.size)
    for line in lines:
        assert line["upstream"] == "docker.io"
        assert line["method"] == "GET"
        assert isinstance(line["duration_ms"], float)
    assert hit["path"] == path


async def test_request_ids_are_echoed_or_made_up(
    mirror: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mirror.access")
    given = await mirror.get("/v2/", headers={"X-Request-ID": "build-4711"})
    assert given.headers["X-Request-ID"] == "build-4711"
    made = await mirror.get("/v2/")
    assert len(made.headers["X-Request-ID"]) == 16
    hostile = await mirror.get("/v2/", headers={"X-Request-ID": "a b\tc" + "x" * 300})
    assert hostile.headers["X-Request-ID"] != "a b\tc" + "x" * 300
    ids = [line["request_id"] for line in access_lines(caplog)]
    assert ids == ["build-4711", made.headers["X-Request-ID"], hostile.headers["X-Request-ID"]]
    # Errors carry it too.
    missing = await mirror.get("/v2/nope/nope/manifests/x?ns=elsewhere.example")
    assert missing.status == 404 and "X-Request-ID" in missing.headers


async def test_access_lines_as_json(
    mirror: Client, alpine: Manifest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mirror.access")
    await mirror.get("/v2/alpine/manifests/3.19", headers={"X-Request-ID": "r1"})
    (record,) = [r for r in caplog.records if r.name == "mirror.access"]
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "info"
    assert entry["logger"] == "mirror.access"
    assert entry["request_id"] == "r1"
    assert entry["path"] == "/v2/alpine/manifests/3.19"
    assert entry["cache"] == "miss"
    assert entry["status"] == 200
    assert set(entry) >= {"time", "message", "remote", "bytes", "duration_ms", "upstream"}


async def test_client_credentials_never_reach_the_log(
    mirror: Client, alpine: Manifest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await mirror.get(
        "/v2/alpine/manifests/3.19",
        headers={"Authorization": "Basic c2VjcmV0dXNlcjpodW50ZXIy", "Cookie": "session=hunter2"},
    )
    assert "c2VjcmV0dXNlcjpodW50ZXIy" not in caplog.text
    assert "hunter2" not in caplog.text


# --- status ---------------------------------------------------------------------------------


async def test_api_status_reports_what_the_metrics_say(
    start_mirror: StartMirror, alpine: Manifest, data_dir: Path
) -> None:
    async with FakeRegistry(ratelimit=(100, 77)) as hub:
        hub.push_image("library/alpine", "3.19", alpine)
        mirror = await start_mirror(hub.url)
        # Metrics count for the whole process (every test's mirror): compare changes.
        before = await (await mirror.get("/api/status")).json()
        for _ in range(2):
            await pull_like_docker(mirror, "library/alpine", "3.19")
        hub.add_fault(Fault("status", status=500, path_contains="/missing/", times=None))
        assert (await mirror.get("/v2/team/missing/manifests/1")).status == 502
        resp = await mirror.get("/api/status")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/json")
        status = await resp.json()
        samples = await scrape(mirror)
        hub_url = hub.url

    def grew(section: str, key: str) -> int:
        change: int = status[section][key] - before[section][key]
        return change

    assert (grew("requests", "hits"), grew("requests", "misses")) == (5, 6)
    assert grew("requests", "total") == 11
    hits = delta(samples, {}, "mirror_cache_hits_total")
    misses = delta(samples, {}, "mirror_cache_misses_total")
    assert status["requests"]["hits"] == hits
    assert status["requests"]["hit_ratio"] == round(hits / (hits + misses), 4)
    blob_bytes = sum(blob.size for blob in alpine.blobs)
    assert grew("bytes", "from_cache") == blob_bytes
    assert grew("bytes", "from_upstream") == blob_bytes
    assert grew("bytes", "fetched_upstream") == blob_bytes + alpine.size
    assert grew("bytes", "saved") == blob_bytes  # the warm pull's blobs came from disk
    assert status["cache"]["blobs"] == {
        "objects": len(files_under(data_dir / "blobs")),
        "bytes": blob_bytes,
    }
    assert status["cache"]["manifests"]["objects"] == 1
    assert status["cache"]["total_bytes"] == blob_bytes + status["cache"]["manifests"]["bytes"]
    hub_row = next(u for u in status["upstreams"] if u["host"] == "docker.io")
    assert hub_row["url"] == hub_url
    assert hub_row["ratelimit"] == {"limit": 100, "remaining": 76, "window_seconds": 21600}
    assert hub_row["requests"] == delta(
        samples, {}, "mirror_upstream_requests_total", upstream="docker.io"
    )
    hub_before = next(u for u in before["upstreams"] if u["host"] == "docker.io")
    assert hub_row["errors"] - hub_before["errors"] == 1  # the 500; a 401 challenge is not one
    assert [u["host"] for u in status["upstreams"]][:2] == ["docker.io", "ghcr.io"]
    assert status["top_repositories"] == [
        {"repository": "docker.io/library/alpine", "pulls": 2, "hosted": False}
    ]
    latest = status["recent_errors"][0]
    assert latest["upstream"] == "docker.io"
    assert latest["message"] == f"upstream {hub_url.removeprefix('http://')} answered HTTP 500"
    assert status["version"] and status["uptime_seconds"] >= 0


async def test_the_status_page_and_its_files_are_served_without_errors(
    mirror: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    page = await mirror.get("/")
    assert page.status == 200
    assert page.content_type == "text/html"
    assert "api/status" in await page.text() or "status.js" in await page.text()
    for name, content_type in (("status.js", "text/javascript"), ("status.css", "text/css")):
        resp = await mirror.get(f"/static/{name}")
        assert resp.status == 200, name
        assert resp.content_type == content_type
        assert len(await resp.read()) > 0
    for bad in ("/static/../ops.py", "/static/.hidden.js", "/static/nope.js", "/static/x.py"):
        assert (await mirror.get(bad)).status == 404, bad
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_malformed_requests_are_logged_as_one_line_not_a_traceback(
    tmp_path: Path,
) -> None:
    """aiohttp refuses them with a 400 itself; the mirror's log gets a warning line."""
    proc = MirrorProcess("http://127.0.0.1:9", tmp_path / "data", cwd=tmp_path)
    async with proc:
        host, _, port = proc.url.removeprefix("http://").rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nBad Header\x00: y\r\n\r\n")
        await writer.drain()
        assert b" 400 " in await reader.readline()
        writer.close()
        assert await proc.stop() == 0
    assert "refused a malformed request" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_a_blob_cut_off_by_a_failed_download_counts_as_aborted(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mirror.access")
    layer = random_layer(256 * 1024, seed=77)
    upstream.push_blob("library/alpine", layer)
    upstream.add_fault(Fault("corrupt", server="cdn"))
    before = await scrape(mirror)
    resp = await mirror.get(f"/v2/alpine/blobs/{layer.digest}")
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    after = await scrape(mirror)
    labels = {"route": "blob", "method": "GET"}
    assert delta(after, before, "mirror_http_requests_total", status="aborted", **labels) == 1
    assert delta(after, before, "mirror_http_requests_total", status="200", **labels) == 0
    (line,) = [
        r for r in caplog.records if r.name == "mirror.access" and "/blobs/" in r.msg % r.args
    ]
    assert line.access["aborted"] is True  # type: ignore[attr-defined]
    assert "200 (aborted)" in line.getMessage()
