"""Clients streaming blobs from mirror processes at once, each recording how its transfer
went (status, bytes as they came, whether the body ended where it should and what it hashed
to), so a test can wait for first bytes, act mid-transfer, and then judge every outcome."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

import aiohttp

from testkit.fakeupstream import Blob


@dataclass
class Transfer:
    """One client's GET, as it went."""

    status: int = 0
    received: int = 0
    complete: bool = False  # the body ended where its Content-Length said, without error
    digest: str = ""  # of the whole body, once complete
    error: str | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)  # first bytes, or the end
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def got(self, blob: Blob) -> bool:
        """The client has the whole blob, verified."""
        return self.status == 200 and self.complete and self.digest == blob.digest

    def got_no_wrong_body(self, blob: Blob) -> bool:
        """Whatever happened, the client does not hold a complete body other than the blob:
        it has the blob, or its transfer failed (an error status, or a body cut short)."""
        return self.got(blob) or self.status != 200 or not self.complete


async def transfer(http: aiohttp.ClientSession, url: str, record: Transfer) -> None:
    """GET `url`, hashing the body as it streams (many large bodies would not fit in
    memory), and record how it went. Never raises for a failed transfer."""
    hasher = hashlib.sha256()
    try:
        async with http.get(url) as resp:
            record.status = resp.status
            async for chunk in resp.content.iter_any():
                hasher.update(chunk)
                record.received += len(chunk)
                record.started.set()
            record.complete = True
            record.digest = "sha256:" + hasher.hexdigest()
    except (aiohttp.ClientError, TimeoutError) as exc:
        record.error = type(exc).__name__
    finally:
        record.started.set()
        record.ended.set()


async def start_transfers(
    http: aiohttp.ClientSession, url: str, count: int, within: float
) -> tuple[list[Transfer], list[asyncio.Task[None]]]:
    """`count` clients GETting `url` at once, each past its first bytes (or its end) on
    return, which is at most `within` s later."""
    records = [Transfer() for _ in range(count)]
    tasks = [asyncio.create_task(transfer(http, url, record)) for record in records]
    async with asyncio.timeout(within):
        await asyncio.gather(*(record.started.wait() for record in records))
    return records, tasks


class Transfers:
    """Transfers started one by one or in bulk, each in a task of its own; all are waited
    for (or cancelled) when the group is closed."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.records: list[Transfer] = []
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, url: str, count: int = 1) -> list[Transfer]:
        """`count` clients GETting `url`, started now."""
        started = [Transfer() for _ in range(count)]
        for record in started:
            self.records.append(record)
            self._tasks.append(asyncio.create_task(transfer(self.http, url, record)))
        return started

    async def first_bytes(self, records: list[Transfer], within: float) -> None:
        """Wait until each of `records` has received bytes or ended; fail (showing them) if
        one ended without a byte or any is still waiting after `within` s."""

        try:
            async with asyncio.timeout(within):
                await asyncio.gather(*(record.started.wait() for record in records))
        except TimeoutError:
            waiting = [r for r in records if not r.received]
            raise AssertionError(
                f"{len(waiting)} of {len(records)} clients without a byte after {within} s: "
                f"{waiting}"
            ) from None
        without = [r for r in records if not r.received]
        assert not without, f"clients that ended without a byte: {without}"

    async def finish(self, within: float) -> list[Transfer]:
        """Wait until every transfer has ended (failing after `within` s); all records."""
        try:
            async with asyncio.timeout(within):
                await asyncio.gather(*self._tasks)
        except TimeoutError:
            unfinished = [r for r in self.records if not r.ended.is_set()]
            raise AssertionError(f"not finished within {within} s: {unfinished}") from None
        return self.records

    async def close(self) -> None:
        """Cancel whatever still runs (a test that failed half-way) and wait for it."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
