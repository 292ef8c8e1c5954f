"""What registry clients do, as test helpers: pull like a Docker daemon (HEAD the tag, GET
the manifest by digest, GET every blob, checking every digest) through the in-process test
client or over a session against a mirror process; and what a pull left in the data dir."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from testkit.fakeupstream import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Manifest,
)
from tests.conftest import Client, files_under, sha256

ALL_MANIFESTS = ", ".join([DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX])


async def pull_like_docker(mirror: Client, name: str, tag: str) -> Manifest | None:
    """What a Docker daemon does: HEAD the tag, GET the manifest by digest, GET every blob.
    Checks every digest on the way; returns nothing, fails on any mismatch."""
    head = await mirror.head(f"/v2/{name}/manifests/{tag}", headers={"Accept": ALL_MANIFESTS})
    assert head.status == 200, await head.text()
    digest = head.headers["Docker-Content-Digest"]
    resp = await mirror.get(f"/v2/{name}/manifests/{digest}", headers={"Accept": ALL_MANIFESTS})
    assert resp.status == 200, await resp.text()
    body = await resp.read()
    assert sha256(body) == digest
    assert resp.headers["Content-Type"] == head.headers["Content-Type"]
    assert int(head.headers["Content-Length"]) == len(body)
    manifest = json.loads(body)
    for descriptor in [manifest["config"], *manifest["layers"]]:
        blob = await mirror.get(f"/v2/{name}/blobs/{descriptor['digest']}")
        assert blob.status == 200, await blob.text()
        data = await blob.read()
        assert len(data) == descriptor["size"]
        assert sha256(data) == descriptor["digest"]
        assert blob.headers["Docker-Content-Digest"] == descriptor["digest"]
    return None


# --- over a session, against a mirror process ------------------------------------------------

ACCEPT = {"Accept": ALL_MANIFESTS}


async def pull(http: aiohttp.ClientSession, base: str, name: str, tag: str) -> dict[str, bytes]:
    """Pull like a Docker daemon (HEAD the tag, GET the manifest by digest, GET every blob),
    checking every digest; returns what was pulled, by digest."""
    head = await http.head(f"{base}/v2/{name}/manifests/{tag}", headers=ACCEPT)
    assert head.status == 200, await head.text()
    digest = head.headers["Docker-Content-Digest"]
    pulled = {digest: await get_manifest(http, base, name, digest)}
    manifest = json.loads(pulled[digest])
    for descriptor in [manifest["config"], *manifest["layers"]]:
        pulled[descriptor["digest"]] = await get_blob(http, base, name, descriptor["digest"])
        assert len(pulled[descriptor["digest"]]) == descriptor["size"]
    return pulled


async def get_manifest(http: aiohttp.ClientSession, base: str, name: str, digest: str) -> bytes:
    async with http.get(f"{base}/v2/{name}/manifests/{digest}", headers=ACCEPT) as resp:
        assert resp.status == 200, await resp.text()
        data = await resp.read()
    assert sha256(data) == digest
    return data


async def get_blob(http: aiohttp.ClientSession, base: str, name: str, digest: str) -> bytes:
    async with http.get(f"{base}/v2/{name}/blobs/{digest}") as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Docker-Content-Digest"] == digest
        data = await resp.read()
    assert sha256(data) == digest
    return data


# --- what a pull left behind -----------------------------------------------------------------


def cached_blobs(data_dir: Path) -> set[str]:
    return {p for p in files_under(data_dir) if p.startswith("blobs/")}
