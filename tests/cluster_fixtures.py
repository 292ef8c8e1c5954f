"""A cluster in one test process: mirror apps on their own loopback ports, sharing the
session's SeaweedFS bucket (under the test's prefix) and one Redis, each advertising its own
address, with a data dir of its own (so each has its own spool and hot cache, as replicas on
different hosts have)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import Any, Protocol

import pytest
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from mirror import config
from mirror.server.app import create_app
from testkit.mirrorproc import free_port
from testkit.seaweed import SeaweedFS
from tests.conftest import Client, toml_value
from tests.s3_fixtures import BUCKET, prefix_of

CLUSTER_SECRET = "the-cluster-secret-of-the-tests"
LEASE_SECONDS = 1.0  # short, so a takeover happens within a test


def redis_prefix_of(root: Path) -> str:
    """The Redis key prefix of the cluster of the test rooted at `root`."""
    return prefix_of(root) + ":"


class StartReplica(Protocol):
    def __call__(
        self,
        name: str,
        upstream_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        **settings: Any,
    ) -> Awaitable[Client]: ...


@pytest.fixture
def start_replica(
    aiohttp_client: AiohttpClient,
    tmp_path: Path,
    seaweed: SeaweedFS,
    redis_url: str,
) -> StartReplica:
    """Start replica `name` of the test's cluster in front of `upstream_url` (settings
    override the cluster's); its client sends `headers` with every request."""

    async def start(
        name: str,
        upstream_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        **settings: Any,
    ) -> Client:
        port = free_port()
        values = {
            "upstream": upstream_url,
            "data_dir": str(tmp_path / name),
            "storage": f"s3://{BUCKET}/{prefix_of(tmp_path)}",
            "s3_endpoint": seaweed.endpoint,
            "redis_url": redis_url,
            "advertise_url": f"http://127.0.0.1:{port}",
            "cluster_secret": CLUSTER_SECRET,
            "cluster_lease": LEASE_SECONDS,
            "redis_key_prefix": redis_prefix_of(tmp_path),
            "connect_timeout": 2.0,
            "read_timeout": 5.0,
            **settings,
        }
        file = tmp_path / f"{name}.toml"
        file.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in values.items()))
        app = await create_app(config.load(config_file=file, environ={}).config)
        return await aiohttp_client(app, server_kwargs={"port": port}, headers=headers)

    return start


def blob_key(root: Path, digest: str) -> str:
    """The key of a blob in the bucket, in the cluster of the test rooted at `root`."""
    return f"{prefix_of(root)}/blobs/{digest.replace(':', '/')}"


async def stored_keys(seaweed: SeaweedFS, root: Path) -> list[str]:
    """The keys under the prefix of the test rooted at `root`, and its multipart uploads
    not completed (as `upload:<key>`): everything the cluster left in the bucket."""

    def listed() -> list[str]:
        client = seaweed.client()
        prefix = prefix_of(root)
        objects = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
        uploads = client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])
        return [o["Key"] for o in objects] + [f"upload:{u['Key']}" for u in uploads]

    return await asyncio.to_thread(listed)


async def expire_lease(redis_url: str, root: Path, digest: str) -> None:
    """End the lease on `digest`'s download in the cluster of the test rooted at `root`, as
    its running out under a leader stalled past its ttl does (`mirror.meta.redis` keeps it
    under `lease:<name>`)."""
    client = Redis.from_url(redis_url)
    try:
        assert await client.delete(f"{redis_prefix_of(root)}lease:blob:{digest}") == 1
    finally:
        await client.aclose()
