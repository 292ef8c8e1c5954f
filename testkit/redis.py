"""A private redis-server for tests and benchmarks: on a loopback port, keeping nothing on
disk. `redis_argv` is its one command line; `RedisProcess` runs it synchronously (the
integration suite, the benchmarks); `tests.meta_fixtures.RedisServer` runs it in an event
loop."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from testkit.mirrorserver import ServerProcess

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def redis_argv(port: int, directory: Path) -> list[str]:
    """redis-server on 127.0.0.1:`port`, its (unused) working dir `directory`."""
    return [
        REDIS_SERVER,
        *("--port", str(port), "--bind", "127.0.0.1"),
        *("--save", "", "--appendonly", "no", "--dir", str(directory)),
    ]


def answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisProcess(ServerProcess):
    """A private redis-server, started and stopped like the other servers."""

    name = "redis"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.host}/0"

    def argv(self) -> list[str]:
        return redis_argv(self.port, self.log_dir)

    def ready(self) -> bool:
        return answers_ping(self.port)
