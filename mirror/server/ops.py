"""What operators and their tools ask the mirror: health, readiness, metrics, the status
page and its JSON. None of these touch an upstream, and none needs the registry API."""

from __future__ import annotations

import asyncio
import mimetypes
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from mirror import metrics
from mirror.cache.access import AccessRecorder
from mirror.meta.store import Health, Replica
from mirror.server import status
from mirror.server.auth import CATALOG_FILTER
from mirror.storage import ContentStore
from mirror.upstream.routing import Router

STATIC_DIR = Path(__file__).parent / "static"
READY_CHECK_TIMEOUT = 2.0  # seconds a readiness check may take before it counts as failed
_STATIC_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*\.(?:js|css|png|svg)")


class OpsRecords(Health, status.StatusRecords, Protocol):
    """The metadata store as readiness and the status page see it."""


class OpsRoutes:
    def __init__(
        self,
        store: ContentStore,
        meta: OpsRecords,
        router: Router,
        access: AccessRecorder,
        replica: Replica,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._meta = meta
        self._router = router
        self._access = access
        self._replica = replica
        self._clock = clock
        self._started_at = clock()

    def register(self, router: web.UrlDispatcher) -> None:
        """Add the routes, each named for its metrics label (see `middleware.route_label`)."""
        router.add_get("/healthz", self.healthz, name="healthz")
        router.add_get("/readyz", self.readyz, name="readyz")
        router.add_get("/metrics", self.metrics, name="metrics")
        router.add_get("/api/status", self.api_status, name="status.api")
        router.add_get("/", self.status_page, name="status")
        router.add_get("/static/{file}", self.static, name="static")

    async def healthz(self, request: web.Request) -> web.Response:
        """The process is alive and its event loop answers."""
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready to serve: the data dir takes writes and the metadata store answers. 503
        names the check that failed, for the orchestrator's events and the operator."""
        checks = {
            "data_dir": await self._check(self._data_dir_writable),
            "meta_store": await self._check(self._meta.ping),
        }
        ready = all(result == "ok" for result in checks.values())
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status=200 if ready else 503,
        )

    async def metrics(self, request: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, self._registry())
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def api_status(self, request: web.Request) -> web.Response:
        await self._access.flush()  # this process's latest pulls count in the top list
        samples = await asyncio.to_thread(status.Samples, self._registry())
        document = await status.build(
            samples,
            upstreams=self._router.upstreams,
            hosted_patterns=self._router.hosting.patterns,
            meta=self._meta,
            replica=self._replica,
            started_at=self._started_at,
            now=self._clock(),
            visible=request.get(CATALOG_FILTER),  # with auth on, what the user may pull
        )
        return web.json_response(document, headers={"Cache-Control": "no-store"})

    async def status_page(self, request: web.Request) -> web.Response:
        return await _static_file(STATIC_DIR / "index.html")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["file"]
        path = STATIC_DIR / name
        if not _STATIC_NAME.fullmatch(name) or not path.is_file():
            raise web.HTTPNotFound()
        return await _static_file(path)

    # --- helpers --------------------------------------------------------------------------

    def _registry(self) -> CollectorRegistry:
        def usage() -> metrics.Usage:
            return {kind: (u.objects, u.bytes) for kind, u in self._store.usage.items()}

        return metrics.collect(usage)

    async def _data_dir_writable(self) -> None:
        await asyncio.to_thread(self._store.check_writable)

    @staticmethod
    async def _check(check: Callable[[], Awaitable[None]]) -> str:
        try:
            async with asyncio.timeout(READY_CHECK_TIMEOUT):
                await check()
        except TimeoutError:
            return f"failed: no answer within {READY_CHECK_TIMEOUT:g} s"
        except Exception as exc:
            return f"failed: {exc.__class__.__name__}: {exc}"[:300]
        return "ok"


async def _static_file(path: Path) -> web.Response:
    """A small file of the status page, in memory (a `web.FileResponse` cannot be prepared
    early, which the access-log middleware does to time what it sends)."""
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    body = await asyncio.to_thread(path.read_bytes)
    return web.Response(body=body, content_type=content_type, headers={"Cache-Control": "no-cache"})
