"""Whether repeating a failure leaves anything behind in this process: open files, client
connections that were never released, asyncio tasks that never ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from testkit.waiting import wait_until

SETTLE_SECONDS = 3.0

# Connection handlers of the servers in this process (the mirror's and the fake's): they
# live as long as their keep-alive connection, which the socket count below accounts for.
CONNECTION_TASK = "RequestHandler.start"


@dataclass(frozen=True)
class Snapshot:
    """What this process (the mirror, the fake upstream and the test client) holds open."""

    files: Counter[str]  # open fds other than sockets, by what they point at
    connections: Counter[int]  # connected client sockets, by the port they are connected to
    tasks: Counter[str]  # live asyncio tasks but connection handlers, by coroutine

    def __str__(self) -> str:
        return (
            f"files {dict(self.files)}, connections by port {dict(self.connections)}, "
            f"tasks {dict(self.tasks)}"
        )


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1], 16)  # "0100007F:1F90" -> 8080


def _tcp_sockets() -> dict[str, tuple[int, int, str]]:
    """Every TCP socket in this network namespace: inode -> (local port, remote port, state)."""
    sockets: dict[str, tuple[int, int, str]] = {}
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                sockets[inode] = (_port(local), _port(remote), state)
    return sockets


def snapshot() -> Snapshot:
    gc.collect()
    tcp = _tcp_sockets()
    files: Counter[str] = Counter()
    ours: list[tuple[int, int, str]] = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = str(fd.readlink())
        except FileNotFoundError:
            continue  # the fd of the listing itself, closed by now
        if target.startswith("socket:["):
            if (found := tcp.get(target[8:-1])) is not None:
                ours.append(found)
        else:
            files[target] += 1
    listening = {local for local, _, state in ours if state == "0A"}
    # Client ends of connections to the servers in this process (established, or closed
    # by the server and not yet by us): the mirror's to the upstream, the test's to the
    # mirror. A response never released would keep one of them busy, and the next request
    # would open another.
    connections = Counter(
        remote
        for local, remote, state in ours
        if state in ("01", "08") and remote in listening and local not in listening
    )
    current = asyncio.current_task()
    tasks = Counter(
        getattr(task.get_coro(), "__qualname__", "?")
        for task in asyncio.all_tasks()
        if task is not current and not task.done()
    )
    del tasks[CONNECTION_TASK]
    return Snapshot(files, connections, tasks)


async def settled(within: float = SETTLE_SECONDS) -> Snapshot:
    """A snapshot once the process is quiet: the same twice, 50 ms apart."""
    previous = snapshot()
    for _ in range(int(within / 0.05)):
        await asyncio.sleep(0.05)
        now = snapshot()
        if now == previous:
            return now
        previous = now
    return previous


def leaks(now: Snapshot, reference: Snapshot) -> list[str]:
    """What `now` holds that repeating the fault should not have added: files or tasks
    beyond the reference, or more than the one idle keep-alive connection per server that
    requests made one after another leave."""
    found = [f"file {name!r}" for name in (now.files - reference.files)]
    found += [f"task {name}" for name in (now.tasks - reference.tasks)]
    found += [f"{n} connections to port {port}" for port, n in now.connections.items() if n > 1]
    return found


async def nothing_leaked(
    reference: Snapshot, *, tries: int, within: float = SETTLE_SECONDS
) -> None:
    """Wait (bounded) until nothing beyond `reference` is held after `tries` tries; fail naming
    what stayed."""

    def held() -> str:
        now = snapshot()
        return (
            f"held after {tries} tries: {leaks(now, reference)}; now {now}; "
            f"after the first try {reference}"
        )

    await wait_until(
        lambda: not leaks(snapshot(), reference), within=within, message=held, interval=0.05
    )
