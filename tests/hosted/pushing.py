"""Helpers for tests that push into hosted repositories over HTTP: content builders and the
request sequences clients send (monolithic, chunked, streamed)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from pytest_aiohttp import AiohttpClient

from mirror import mediatypes
from tests.client_auth.helpers import basic, write_htpasswd
from tests.conftest import Client, StartMirror, mirror_starter

HOSTED = ["local/*", "registry.local/team/*"]
PUSHER, PASSWORD = "pusher", "pusher-password"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def logged_in_mirrors(aiohttp_client: AiohttpClient, tmp_path: Path, data_dir: Path) -> StartMirror:
    """Mirrors with an htpasswd file of one user, `PUSHER`, whose client logs in as it with
    every request (anonymous clients never push)."""
    users = write_htpasswd(tmp_path / "htpasswd", {PUSHER: PASSWORD})
    start = mirror_starter(aiohttp_client, tmp_path, data_dir, basic(PUSHER, PASSWORD))

    async def logged_in(
        upstream_url: str, *, clock: Callable[[], float] | None = None, **settings: Any
    ) -> Client:
        return await start(upstream_url, clock=clock, **{"htpasswd": str(users), **settings})

    return logged_in


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Blob:
    data: bytes

    @property
    def digest(self) -> str:
        return digest_of(self.data)

    def descriptor(self, media_type: str) -> dict[str, Any]:
        return {"mediaType": media_type, "digest": self.digest, "size": len(self.data)}


@dataclass(frozen=True)
class Pushable:
    """A manifest with the blobs it names."""

    media_type: str
    data: bytes
    blobs: tuple[Blob, ...] = ()

    @property
    def digest(self) -> str:
        return digest_of(self.data)

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}


def image(
    seed: str,
    *,
    media_type: str = mediatypes.OCI_MANIFEST,
    extra: dict[str, Any] | None = None,
    layer_size: int = 1000,
) -> Pushable:
    """An image manifest with a config and two layers (the first about `layer_size` bytes),
    unique per `seed`."""
    docker = media_type == mediatypes.DOCKER_MANIFEST
    config = Blob(json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode())
    first = hashlib.shake_256(f"layer one of {seed}".encode()).digest(layer_size)
    layers = (Blob(first), Blob(f"layer two of {seed}".encode()))
    document = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.descriptor(DOCKER_CONFIG if docker else OCI_CONFIG),
        "layers": [layer.descriptor(DOCKER_LAYER if docker else OCI_LAYER) for layer in layers],
        **(extra or {}),
    }
    return Pushable(media_type, json.dumps(document, indent=3).encode(), (config, *layers))


def index(children: list[Pushable], *, media_type: str = mediatypes.OCI_INDEX) -> Pushable:
    platforms = [{"os": "linux", "architecture": arch} for arch in ("amd64", "arm64")]
    document = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            {**child.descriptor(), "platform": platform}
            for child, platform in zip(children, platforms, strict=False)
        ],
    }
    return Pushable(media_type, json.dumps(document).encode())


async def start_upload(mirror: Client, repo: str) -> str:
    """POST a new session; its Location."""
    resp = await mirror.post(f"/v2/{repo}/blobs/uploads/")
    assert resp.status == 202, await resp.text()
    return resp.headers["Location"]


async def push_blob(mirror: Client, repo: str, blob: Blob) -> None:
    """POST then one monolithic PUT, as containerd and oras do."""
    location = await start_upload(mirror, repo)
    resp = await mirror.put(location, params={"digest": blob.digest}, data=blob.data)
    assert resp.status == 201, await resp.text()


async def push(mirror: Client, repo: str, manifest: Pushable, reference: str) -> str:
    """Push the manifest's blobs, then the manifest under `reference`; its digest."""
    for blob in manifest.blobs:
        await push_blob(mirror, repo, blob)
    resp = await put_manifest(mirror, repo, manifest, reference)
    assert resp.status == 201, await resp.text()
    return resp.headers["Docker-Content-Digest"]


async def put_manifest(
    mirror: Client, repo: str, manifest: Pushable, reference: str, content_type: str | None = None
) -> aiohttp.ClientResponse:
    return await mirror.put(
        f"/v2/{repo}/manifests/{reference}",
        data=manifest.data,
        headers={"Content-Type": manifest.media_type if content_type is None else content_type},
    )


async def error_code(resp: aiohttp.ClientResponse) -> str:
    body = await resp.json()
    return str(body["errors"][0]["code"])
