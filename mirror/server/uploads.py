"""The blob upload endpoints (`/v2/<name>/blobs/uploads/...`) of hosted repositories, as the
OCI distribution spec has them: `POST` to start (or, with `digest`, to upload in one go;
with `mount` and `from`, to mount a blob the user may pull from another repository, else
an ordinary session: 202), `PATCH` chunks (with `Content-Range`, in order, or streamed
without), `GET` the status, `PUT ?digest=` to close and `DELETE` to cancel. Every answer
about a session carries its `Location`, `Range` (`0-<last byte>`) and `Docker-Upload-UUID`.
Any other repository is refused 405 `UNSUPPORTED`, naming the hosted patterns."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from urllib.parse import urlencode

from aiohttp import web

from mirror import errors
from mirror.cache.hosted import HostedRepositories
from mirror.cache.uploads import UploadSessions, upload_range
from mirror.errors import RegistryError
from mirror.meta.store import Upload
from mirror.reference import Digest
from mirror.server import addressing, auth
from mirror.server.hosted import push_refusal
from mirror.upstream.hosting import HostedRepo
from mirror.upstream.routing import Router

_NAME = "{name:.+}"  # the name may contain "/"; the endpoint suffix anchors the match
_CONTENT_RANGE = re.compile(r"([0-9]{1,19})-([0-9]{1,19})")
_BODY_CHUNK = 1 << 16


class UploadRoutes:
    """Handlers for blob uploads into hosted repositories."""

    def __init__(
        self, router: Router, hosted: HostedRepositories, sessions: UploadSessions
    ) -> None:
        self._router = router
        self._hosted = hosted
        self._sessions = sessions

    def register(self, router: web.UrlDispatcher) -> None:
        uploads = f"/v2/{_NAME}/blobs/uploads"
        router.add_route("*", f"{uploads}/{{upload_id:.*}}", self.session, name="push.session")
        router.add_route("*", uploads, self.start, name="push")

    async def start(self, request: web.Request) -> web.StreamResponse:
        repo = self._hosted_repo(request)
        if request.method != "POST":
            raise RegistryError(errors.BLOB_UPLOAD_UNKNOWN, "no upload id in the URL")
        if (mounted := await self._mount(request, repo)) is not None:
            return mounted
        if (digest := request.query.get("digest")) is not None:
            return await self._close(request, repo, await self._sessions.start(repo.name), digest)
        upload = await self._sessions.start(repo.name)
        return _session_response(request, upload, status=202)

    async def session(self, request: web.Request) -> web.StreamResponse:
        repo = self._hosted_repo(request)
        upload_id = request.match_info["upload_id"]
        if not upload_id:  # `.../uploads/`: where clients POST
            return await self.start(request)
        upload = await self._sessions.find(repo.name, upload_id)
        if request.method in ("GET", "HEAD"):
            return _session_response(request, upload, status=204)
        if request.method == "PATCH":
            upload = await self._sessions.append(upload, _body(request), _chunk_start(request))
            return _session_response(request, upload, status=202)
        if request.method == "PUT":
            if (start := _chunk_start(request)) is not None and start != upload.size:
                await self._sessions.append(upload, _body(request), start)  # raises 416
            return await self._close(request, repo, upload, request.query.get("digest"))
        if request.method == "DELETE":
            await self._sessions.cancel(upload)
            return web.Response(status=204)
        raise RegistryError(errors.UNSUPPORTED, f"{request.method} of an upload")

    async def _close(
        self, request: web.Request, repo: HostedRepo, upload: Upload, digest_text: str | None
    ) -> web.Response:
        """Finish the session under the digest the client named: 201, or DIGEST_INVALID."""
        if digest_text is None:
            raise RegistryError(errors.DIGEST_INVALID, "closing an upload needs ?digest=")
        digest = Digest.parse(digest_text)
        await self._sessions.finish(upload, digest, _body(request))
        await self._hosted.add_blob(repo, digest)
        return _blob_created(request, digest)

    async def _mount(self, request: web.Request, repo: HostedRepo) -> web.Response | None:
        """201 when `mount` names a blob that the `from` repository holds and the user may
        pull from there; None (an ordinary upload follows) when anything is amiss."""
        mount, source_name = request.query.get("mount"), request.query.get("from")
        if mount is None or source_name is None:
            return None
        digest = Digest.parse(mount)
        try:
            source = self._router.resolve(source_name, request.query.get("ns"))
        except RegistryError:
            return None
        if not auth.may_pull(request, source):
            return None
        if not await self._hosted.mount(repo, digest, source):
            return None
        return _blob_created(request, digest)

    def _hosted_repo(self, request: web.Request) -> HostedRepo:
        """The hosted repository pushed to: 405 for any other, NAME_INVALID for a name a
        hosted pattern claims but the grammar refuses."""
        repo = addressing.served_target(request)
        if isinstance(repo, HostedRepo):
            return repo
        if repo is None and self._router.hosting.claims(
            request.match_info["name"], request.query.get("ns")
        ):
            addressing.target(request)  # raises the refusal
        raise push_refusal(self._router.hosting.patterns)


def _session_response(request: web.Request, upload: Upload, *, status: int) -> web.Response:
    headers = {
        "Location": _session_location(request, upload.id),
        "Range": upload_range(upload.size),
        "Docker-Upload-UUID": upload.id,
    }
    return web.Response(status=status, headers=headers)


def _session_location(request: web.Request, upload_id: str) -> str:
    location = f"/v2/{request.match_info['name']}/blobs/uploads/{upload_id}"
    if (ns := request.query.get("ns")) is not None:
        location += "?" + urlencode({"ns": ns})
    return location


def _blob_created(request: web.Request, digest: Digest) -> web.Response:
    headers = {
        "Location": f"/v2/{request.match_info['name']}/blobs/{digest}",
        "Docker-Content-Digest": str(digest),
    }
    return web.Response(status=201, headers=headers)


def _chunk_start(request: web.Request) -> int | None:
    """Where the chunk's `Content-Range` (`<start>-<end>`, inclusive, no unit) puts it;
    None without one (a streamed chunk: appended). 416 for one that does not parse, 400
    SIZE_INVALID when its length disagrees with `Content-Length`."""
    header = request.headers.get("Content-Range")
    if header is None:
        return None
    match = _CONTENT_RANGE.fullmatch(header.strip().removeprefix("bytes="))
    if match is None or int(match[2]) < int(match[1]):
        raise RegistryError(errors.RANGE_NOT_SATISFIABLE, "Content-Range must be <start>-<end>")
    start, end = int(match[1]), int(match[2])
    length = request.content_length
    if length is not None and length != end - start + 1:
        raise RegistryError(
            errors.SIZE_INVALID,
            f"Content-Range {header} is {end - start + 1} bytes, Content-Length {length}",
        )
    return start


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(_BODY_CHUNK):
        yield chunk
