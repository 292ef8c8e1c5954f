"""Cross-cutting HTTP behaviour: errors as the spec's JSON body, the API version header,
request ids, and one access-log line plus metrics per request."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from http import HTTPStatus

from aiohttp import web
from aiohttp.typedefs import Handler

from mirror import errors, metrics, observe
from mirror.errors import RegistryError
from mirror.server.prerendered import PrerenderedResponse
from mirror.server.responses import header_safe

log = logging.getLogger(__name__)
access_log = logging.getLogger("mirror.access")

API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")
REQUEST_ID_HEADER = "X-Request-ID"
RECORD = web.RequestKey("mirror.record", observe.RequestRecord)
# A client's request id is echoed only if it is this tame (it goes into logs and headers).
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_PATH_LOGGED = 512  # characters of a path an access line keeps


def error_response(exc: RegistryError) -> web.Response:
    return web.Response(
        status=exc.status,
        reason=_reason(exc),
        body=exc.body(),
        content_type="application/json",
        headers=dict(exc.headers),
    )


def _reason(exc: RegistryError) -> str | None:
    """For gateway errors, the cause in the status line too: Docker and skopeo drop the body
    of a 5xx answer but print its status line, so this is how the user learns which
    upstream failed."""
    if exc.status < 500:
        return None
    return f"{HTTPStatus(exc.status).phrase} ({header_safe(str(exc), 200)})"


@web.middleware
async def registry_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every failure as `{"errors": [...]}`; never a stack trace to the client."""
    try:
        return await handler(request)
    except RegistryError as exc:
        if exc.status >= 500:
            log.warning("%s %s failed: %s", request.method, request.path[:200], exc)
        return error_response(exc)
    except web.HTTPNotFound:
        return error_response(
            RegistryError(errors.NOT_FOUND, f"no such endpoint: {request.path[:200]}")
        )
    except web.HTTPMethodNotAllowed:
        return error_response(
            RegistryError(errors.UNSUPPORTED, f"method {request.method} is not supported here")
        )
    except (web.HTTPException, asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path[:200])
        return error_response(RegistryError(errors.INTERNAL))


@web.middleware
async def observe_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The outermost layer: give the request an id and a record the caches report into,
    then count it, time it and write its access-log line once the response is sent."""
    record = observe.RequestRecord(request_id=_request_id(request))
    record.route = route_label(request.match_info.route)
    request[RECORD] = record
    observe.begin_request(record)
    started = time.monotonic()
    status = 499  # the client went away before an answer (nginx's convention)
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        # Send it here (a no-op if the handler streamed it already), so a cached blob's
        # sendfile counts in the duration and the log line follows the bytes.
        await response.prepare(request)
        status = response.status
        return response
    finally:
        seconds = time.monotonic() - started
        # A body cut off on purpose (its download failed) is no success, whatever its
        # status line said: it counts as "aborted".
        label = "aborted" if record.aborted else str(status)
        metrics.request_answered(record.route, request.method, label, seconds)
        if access_log.isEnabledFor(logging.INFO):  # its fields cost more than a cache hit
            _log_access(request, response, record, status, seconds)


def route_label(route: web.AbstractRoute) -> str:
    """The metrics and access-log label of a matched route: its name, up to a dot that
    tells apart routes sharing a label (aiohttp wants names unique: `ping` is `/v2/`,
    `ping.unslashed` is `/v2`). Every route is named in the code, so labels stay a fixed
    set; an unnamed route, or no route at all, is `other`."""
    name = route.name
    return name.partition(".")[0] if name else "other"


def _request_id(request: web.Request) -> str:
    """The client's id if tame, else a new one: no secret (it is sent back and logged), only
    unique enough to find a request in the log, so the seeded generator rather than a
    system call per request (`secrets`)."""
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is not None and _REQUEST_ID_RE.fullmatch(given):
        return given
    return f"{random.getrandbits(64):016x}"


def _log_access(
    request: web.Request,
    response: web.StreamResponse | None,
    record: observe.RequestRecord,
    status: int,
    seconds: float,
) -> None:
    body_bytes = record.body_bytes
    if isinstance(response, PrerenderedResponse):
        body_bytes = response.body_size
    elif not body_bytes and isinstance(response, web.Response) and request.method != "HEAD":
        body_bytes = response.content_length or 0
    fields = {
        "remote": request.remote or "-",
        "method": request.method,
        "path": request.path_qs[:_PATH_LOGGED],
        "status": status,
        "aborted": record.aborted,
        "bytes": body_bytes,
        "duration_ms": round(seconds * 1000, 3),
        "cache": record.outcome or "-",
        "upstream": record.upstream or "-",
        "user": record.user or "-",
        "request_id": record.request_id,
        "user_agent": header_safe(request.headers.get("User-Agent", "-"), 200),
    }
    # Made and handled directly: `Logger.info` would also look up the calling frame and
    # its file name, which no access line prints, once per request.
    line = access_log.makeRecord(
        access_log.name,
        logging.INFO,
        __file__,
        0,
        '%s "%s %s" %d%s %dB %.1fms cache=%s upstream=%s user=%s id=%s',
        (
            fields["remote"],
            fields["method"],
            header_safe(str(fields["path"]), _PATH_LOGGED),
            status,
            " (aborted)" if record.aborted else "",
            body_bytes,
            fields["duration_ms"],
            fields["cache"],
            fields["upstream"],
            fields["user"],
            record.request_id,
        ),
        None,
        extra={"access": fields},
    )
    access_log.handle(line)


async def add_response_headers(request: web.Request, response: web.StreamResponse) -> None:
    """distribution sends the version header on every response; some clients check it. The
    request id goes back so a client's report can be matched with the mirror's log. `nosniff`
    keeps a browser from reading upstream bytes (a manifest, a blob) as HTML or script."""
    response.headers[API_VERSION_HEADER[0]] = API_VERSION_HEADER[1]
    response.headers["X-Content-Type-Options"] = "nosniff"
    if (record := request.get(RECORD)) is not None:
        response.headers[REQUEST_ID_HEADER] = record.request_id
