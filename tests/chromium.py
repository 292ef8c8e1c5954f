"""Headless Chromium driven over the Chrome DevTools Protocol, with aiohttp's websocket client.

Everything is asynchronous (Chromium is an asyncio subprocess), so a test can drive the
browser against a server that runs in the test's own event loop. One websocket to the
browser carries every command; pages are attached in "flatten" mode, so each page is a
session id on that socket.

    async with Chromium.launch(tmp_path / "chromium") as browser:
        page = await browser.new_page(width=1280, height=900)
        await page.navigate(url)
        async with asyncio.timeout(10):
            await page.wait_until("document.body.dataset.loaded === 'true'")
        value = await page.evaluate("document.title")
        assert page.problems() == []
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from testkit.waiting import wait_until

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-proxy-server",
    "--mute-audio",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
]
STARTUP_SECONDS = 15.0  # until the browser listens for DevTools
COMMAND_SECONDS = 10.0  # for the browser to answer one command
_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


class ChromiumError(Exception):
    """The browser did not start, a command failed, or a wait ran out."""


class ProtocolError(ChromiumError):
    """The browser answered a command with an error (such as "execution context was
    destroyed" while a page navigates)."""


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    raise ChromiumError("no chromium on PATH (scripts/test installs the Debian package)")


@dataclass
class Page:
    """One browser tab: commands go to its session; its events are kept in order."""

    browser: Chromium
    session_id: str
    events: list[dict[str, Any]] = field(default_factory=list)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, session_id=self.session_id, **params)

    async def navigate(self, url: str) -> None:
        result = await self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise ChromiumError(f"navigating to {url}: {result['errorText']}")

    async def evaluate(self, expression: str, *, await_promise: bool = False) -> Any:
        """The expression's value (JSON-like), raising on a thrown exception."""
        result = await self.send(
            "Runtime.evaluate",
            expression=expression,
            returnByValue=True,
            awaitPromise=await_promise,
        )
        if details := result.get("exceptionDetails"):
            raise ChromiumError(f"evaluating {expression!r}: {_exception_text(details)}")
        return result["result"].get("value")

    async def wait_until(self, expression: str) -> None:
        """Poll `expression` until it is truthy (bound it with `asyncio.timeout`). A page
        still navigating may have no context to evaluate in: that counts as not yet."""
        await wait_until(
            lambda: self.evaluate(expression),
            within=None,
            message=f"{expression} holds",
            interval=0.05,
            ignoring=(ProtocolError,),
        )

    async def screenshot(self) -> bytes:
        """The viewport as PNG."""
        result = await self.send("Page.captureScreenshot", format="png")
        return base64.b64decode(result["data"])

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions and errors the browser logged
        (failed loads included), in the order they happened."""
        found = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "warning"):
                args = " ".join(_remote_text(arg) for arg in params.get("args", []))
                found.append(f"console.{params['type']}: {args}")
            elif method == "Runtime.exceptionThrown":
                found.append(f"exception: {_exception_text(params['exceptionDetails'])}")
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                entry = params["entry"]
                found.append(f"log ({entry.get('source')}): {entry['text']} {entry.get('url', '')}")
        return found


class Chromium:
    """A running headless Chromium and the websocket that drives it."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        http: aiohttp.ClientSession,
        socket: aiohttp.ClientWebSocketResponse,
        log: Path,
    ) -> None:
        self.process = process
        self.log = log
        self._http = http
        self._socket = socket
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._pages: dict[str, Page] = {}
        self._reader = asyncio.create_task(self._read(), name="cdp-reader")

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(
        cls,
        profile: Path,
        *,
        env: Mapping[str, str] | None = None,
    ) -> AsyncIterator[Chromium]:
        """Start Chromium with its own profile directory (its stderr goes to a file there);
        stop it, and everything it started, on exit."""
        await asyncio.to_thread(profile.mkdir, parents=True, exist_ok=True)
        log = profile / "chromium.log"
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                chromium_binary(),
                *FLAGS,
                f"--user-data-dir={profile / 'profile'}",
                "about:blank",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
                env={**os.environ, **(env or {})},
                start_new_session=True,  # its own process group: stopped as one
            )
        browser: Chromium | None = None
        try:
            async with asyncio.timeout(STARTUP_SECONDS):
                url = await _devtools_url(process, log)
                http = aiohttp.ClientSession()
                try:
                    socket = await http.ws_connect(url, max_msg_size=0)
                except BaseException:
                    await http.close()
                    raise
            browser = cls(process, http, socket, log)
            yield browser
        finally:
            if browser is not None:
                await browser._close()
            await _stop(process)

    async def send(
        self, method: str, *, session_id: str | None = None, **params: Any
    ) -> dict[str, Any]:
        """Send one command and wait for its answer."""
        if self._reader.done():
            raise ChromiumError(f"the DevTools connection is gone; see {self.log}")
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params}
        if session_id is not None:
            message["sessionId"] = session_id
        answer = asyncio.get_running_loop().create_future()
        self._waiting[message["id"]] = answer
        try:
            await self._socket.send_str(json.dumps(message))
            async with asyncio.timeout(COMMAND_SECONDS):
                reply = await answer
        finally:
            self._waiting.pop(message["id"], None)
        if "error" in reply:
            raise ProtocolError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def new_page(self, *, width: int = 1280, height: int = 900) -> Page:
        """A fresh tab of `width` x `height` CSS pixels, reporting console messages,
        exceptions and log entries."""
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        page = Page(self, attached["sessionId"])
        self._pages[page.session_id] = page
        for domain in ("Page", "Runtime", "Log"):
            await page.send(f"{domain}.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        return page

    async def _read(self) -> None:
        async for msg in self._socket:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if "id" in data:
                if (waiter := self._waiting.get(data["id"])) and not waiter.done():
                    waiter.set_result(data)
            elif (page := self._pages.get(data.get("sessionId", ""))) is not None:
                page.events.append(data)
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(ChromiumError("the DevTools connection closed"))

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self.send("Browser.close")
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._socket.close()
        await self._http.close()


async def _devtools_url(process: asyncio.subprocess.Process, log: Path) -> str:
    """The browser's websocket address, which it prints on stderr once it listens."""

    async def listening() -> str | None:
        text = await asyncio.to_thread(log.read_text, errors="replace")
        if match := _LISTENING.search(text):
            return match.group(1)
        if process.returncode is not None:
            raise ChromiumError(f"chromium exited with {process.returncode}; see {log}")
        return None

    return await wait_until(listening, within=None, message="chromium listens", interval=0.05)


async def _stop(process: asyncio.subprocess.Process) -> None:
    """Wait briefly for the browser to exit, then kill its whole process group (renderers,
    zygote, utility processes)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(3):
            await process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    await process.wait()


def _remote_text(obj: Mapping[str, Any]) -> str:
    if "value" in obj:
        return str(obj["value"])
    return str(obj.get("description", obj.get("type", "")))


def _exception_text(details: Mapping[str, Any]) -> str:
    exception = details.get("exception") or {}
    return str(exception.get("description") or details.get("text", "exception"))
