"""Several `mirror serve` replicas of one cache: one bucket prefix on an S3-compatible store,
one Redis, one cluster secret, each replica on its own loopback port advertising that
address to the others, each with its own data dir (spool and hot cache).

    shared = Shared(f"s3://{bucket}/{prefix}", s3.endpoint, redis.url, s3.env())
    async with Cluster(upstream.url, tmp_path, shared) as cluster:
        first, _, third = cluster
        ...  # first.url; first.pause() / first.resume() (SIGSTOP / SIGCONT); await first.kill()

`Replica` and `Cluster` are asynchronous (built on `MirrorProcess`, for tests whose fake
upstream runs in their own event loop); `ReplicaServer` and `RedisProcess` are their
synchronous twins for the integration suite (built on `ServerProcess`).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from testkit.mirrorproc import STOP_TIMEOUT, MirrorProcess
from testkit.mirrorserver import MirrorServer

START_TIMEOUT = 30.0  # until every replica answers: three start at once on a busy machine


@dataclass(frozen=True)
class Shared:
    """What every replica of a cluster is given: where the cache is (`storage`, an
    s3://bucket/prefix URL, on `s3_endpoint`), the Redis they coordinate through, the
    secret of their replica-to-replica endpoint, and the AWS environment (credentials)."""

    storage: str
    s3_endpoint: str
    redis_url: str
    s3_env: Mapping[str, str]
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    def args(self) -> list[str]:
        return [
            "--storage",
            self.storage,
            "--s3-endpoint",
            self.s3_endpoint,
            "--redis-url",
            self.redis_url,
        ]

    def env(self) -> dict[str, str]:
        return {**self.s3_env, "MIRROR_CLUSTER_SECRET": self.secret}


def advertise_args(port: int) -> list[str]:
    """A replica on a loopback port tells the others to reach it there."""
    return ["--advertise-url", f"http://127.0.0.1:{port}"]


class Replica(MirrorProcess):
    """One replica: a `mirror serve` process that advertises its own address, and can be
    paused (SIGSTOP, as a long GC pause or a frozen VM) and killed (SIGKILL)."""

    def __init__(
        self,
        upstream_url: str,
        home: Path,
        shared: Shared,
        extra_args: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        """Runs in `home` (its data dir is `home/data`)."""
        home.mkdir(parents=True, exist_ok=True)
        super().__init__(
            upstream_url,
            home / "data",
            cwd=home,
            extra_args=[*shared.args(), *extra_args],
            env={**shared.env(), **(extra_env or {})},
        )
        self.paused = False

    def argv(self, port: int) -> list[str]:
        return [*super().argv(port), *advertise_args(port)]

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.paused = False

    async def kill(self) -> int:
        """kill -9, and reap it."""
        return await self.stop(signal.SIGKILL)

    async def stop(self, sig: int = signal.SIGTERM, within: float = STOP_TIMEOUT) -> int:
        if self.paused and self.returncode is None:
            self.resume()  # a stopped process would only act on the signal when continued
        return await super().stop(sig, within)


class Cluster:
    """`size` replicas in front of `upstream_url`, replica i at home `workdir/replica-i`,
    all given `shared`, `extra_args` and `extra_env`; started together, stopped together."""

    def __init__(
        self,
        upstream_url: str,
        workdir: Path,
        shared: Shared,
        *,
        size: int = 3,
        extra_args: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.upstream_url = upstream_url
        self.workdir = workdir
        self.shared = shared
        self.extra_args = tuple(extra_args)
        self.extra_env = dict(extra_env or {})
        self.replicas = [self._replica(i) for i in range(size)]

    def _replica(self, index: int) -> Replica:
        home = self.workdir / f"replica-{index}"
        return Replica(self.upstream_url, home, self.shared, self.extra_args, self.extra_env)

    def __iter__(self) -> Iterator[Replica]:
        return iter(self.replicas)

    def __getitem__(self, index: int) -> Replica:
        return self.replicas[index]

    async def start(self) -> None:
        """Start every replica at once; if one cannot start, stop the others and fail."""
        started = await asyncio.gather(
            *(r.start(START_TIMEOUT) for r in self.replicas), return_exceptions=True
        )
        failures = [outcome for outcome in started if isinstance(outcome, BaseException)]
        if failures:
            await self.stop()
            raise failures[0]

    async def stop(self) -> None:
        """Stop every replica still running (continuing a paused one first)."""
        running = [r for r in self.replicas if r.port and r.returncode is None]
        await asyncio.gather(*(r.stop() for r in running))

    async def __aenter__(self) -> Cluster:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


# --- synchronous twins, for the integration suite -------------------------------------------


class ReplicaServer(MirrorServer):
    """A replica as a `MirrorServer`: what the integration suite's clients are pointed at."""

    def __init__(self, upstream_url: str, home: Path, shared: Shared) -> None:
        super().__init__(
            upstream_url, home / "data", shared.args(), env=shared.env(), cwd=_made(home)
        )

    def argv(self) -> list[str]:
        return [*super().argv(), *advertise_args(self.port)]


def _made(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory
