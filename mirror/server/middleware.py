"""Cross-cutting HTTP behaviour: errors as the spec's JSON body, the API version header."""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus

from aiohttp import web
from aiohttp.typedefs import Handler

from mirror import errors
from mirror.errors import RegistryError
from mirror.server.responses import header_safe

log = logging.getLogger(__name__)

API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")


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


async def add_api_version(request: web.Request, response: web.StreamResponse) -> None:
    """distribution sends the version header on every response; some clients check it."""
    response.headers[API_VERSION_HEADER[0]] = API_VERSION_HEADER[1]
