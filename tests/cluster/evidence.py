"""What the cluster tests judge by, besides what clients got: what the upstream was asked,
what the bucket holds (objects and unfinished multipart uploads), and what each replica
counted in its metrics."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import aiohttp

from testkit.cluster import Cluster, Replica
from testkit.fakeupstream import Blob, FakeRegistry
from testkit.seaweed import SeaweedFS
from tests.scrape import Labels, delta, parse

Samples = dict[tuple[str, Labels], float]


def downloads(hub: FakeRegistry, digest: str) -> int:
    """GETs of the blob's bytes the upstream answered: its registry redirects blob GETs to
    its CDN, which serves the bytes."""
    return hub.count(server="cdn", method="GET", path=f"/blobs/{digest}")


def manifest_requests(hub: FakeRegistry, repo: str, method: str) -> int:
    """Manifest requests of `repo` the upstream answered (the 401 challenges that precede
    the token flow left out)."""
    prefix = f"/v2/{repo}/manifests/"
    return sum(
        1
        for r in hub.filter_requests(kind="manifest", method=method)
        if r.path.startswith(prefix) and r.status != 401
    )


class Bucket:
    """The cluster's part of the shared bucket: every key under `prefix`."""

    def __init__(self, seaweed: SeaweedFS, prefix: str) -> None:
        self.name = seaweed.bucket
        self.prefix = prefix
        self._client = seaweed.client()

    def _key(self, digest: str) -> str:
        algorithm, hex_digest = digest.split(":", 1)
        return f"{self.prefix}/blobs/{algorithm}/{hex_digest}"

    def _call(self, name: str, **params: Any) -> Any:
        return getattr(self._client, name)(Bucket=self.name, **params)

    async def head(self, blob: Blob) -> dict[str, Any] | None:
        """The blob's object (HEAD), or None if there is none."""

        def look() -> dict[str, Any] | None:
            try:
                found: dict[str, Any] = self._call("head_object", Key=self._key(blob.digest))
            except self._client.exceptions.ClientError as exc:
                if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
            return found

        return await asyncio.to_thread(look)

    async def digest_of(self, blob: Blob) -> str:
        """The sha256 of the blob's object as the bucket serves it."""

        def read() -> str:
            body = self._call("get_object", Key=self._key(blob.digest))["Body"]
            hasher = hashlib.sha256()
            while chunk := body.read(1 << 20):
                hasher.update(chunk)
            return "sha256:" + hasher.hexdigest()

        return await asyncio.to_thread(read)

    async def uploads(self, blob: Blob) -> list[dict[str, Any]]:
        """The blob's multipart uploads begun and neither completed nor aborted."""
        key = self._key(blob.digest)
        answer = await asyncio.to_thread(self._call, "list_multipart_uploads", Prefix=key)
        found: list[dict[str, Any]] = answer.get("Uploads", [])
        return found


async def metrics(http: aiohttp.ClientSession, replica: Replica) -> Samples:
    async with http.get(replica.url + "/metrics") as resp:
        assert resp.status == 200, await resp.text()
        return parse(await resp.text())


class Counters:
    """Every replica's metrics at one moment; `since(earlier, name, **labels)` is how much
    a counter grew on each replica since `earlier`."""

    def __init__(self, samples: list[Samples]) -> None:
        self.samples = samples

    @classmethod
    async def read(cls, http: aiohttp.ClientSession, cluster: Cluster) -> Counters:
        return cls(list(await asyncio.gather(*(metrics(http, r) for r in cluster))))

    def since(self, earlier: Counters, name: str, **labels: str) -> list[float]:
        return [
            delta(after, before, name, **labels)
            for after, before in zip(self.samples, earlier.samples, strict=True)
        ]


JOINS = "mirror_cluster_blob_joins_total"
TAKEOVERS = "mirror_cluster_lease_takeovers_total"


async def leader_of(http: aiohttp.ClientSession, cluster: Cluster, before: Counters) -> Replica:
    """The replica that leads the download begun since `before` (it counted a join as
    leader); fails unless exactly one did."""
    leads = (await Counters.read(http, cluster)).since(before, JOINS, role="leader")
    leaders = [replica for replica, count in zip(cluster, leads, strict=True) if count]
    assert len(leaders) == 1 and sum(leads) == 1, f"downloads led per replica: {leads}"
    return leaders[0]
