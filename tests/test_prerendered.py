"""`PrerenderedResponse` on its own aiohttp application: what the hooks and the handler add
goes out after the rendered part, and a header that would split the answer is refused as
aiohttp refuses it."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from mirror.server import prerendered
from mirror.server.prerendered import PrerenderedResponse

RENDERED = prerendered.render([("Content-Type", "text/plain"), ("Content-Length", "5")])


async def raw_get(client: TestClient[web.Request, web.Application], path: str) -> bytes:
    """Every byte of the answer to one GET on a connection the client then closes."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()


def app_with_hook(value: str) -> web.Application:
    async def hello(request: web.Request) -> web.StreamResponse:
        response = PrerenderedResponse(RENDERED, b"hello")
        response.headers["X-Handler"] = "set"
        return response

    async def hook(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Hook"] = value

    app = web.Application()
    app.router.add_get("/", hello)
    app.on_response_prepare.append(hook)
    return app


async def test_hooks_and_handler_headers_follow_the_rendered_ones(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(app_with_hook("from the hook"))
    resp = await client.get("/")
    assert (resp.status, await resp.read()) == (200, b"hello")
    assert resp.headers["Content-Type"] == "text/plain"
    assert resp.headers["X-Hook"] == "from the hook"
    assert resp.headers["X-Handler"] == "set"
    assert {"Date", "Server"} <= set(resp.headers)
    again = await client.get("/")
    assert await again.read() == b"hello"  # the connection was kept and is usable


async def test_a_header_with_a_line_break_is_never_sent(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(app_with_hook("x\r\nInjected: yes"))
    raw = await raw_get(client, "/")
    assert b"\r\nInjected:" not in raw
    assert not raw.startswith(b"HTTP/1.1 200")
