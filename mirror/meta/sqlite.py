"""The embedded metadata store: one SQLite file in the data dir, the default for one node.

sqlite3 blocks, so every statement runs in a worker thread; one connection, guarded by a
lock, serves them all. The file is in WAL mode, so readers never wait for the writer, and
every expiry is a unix time in a column: several processes sharing the data dir (on one
host, not over NFS) see each other's tags and locks. Expiries are measured with the store's
`clock` (unix time; tests pass their own).

Schema (version 5, in `PRAGMA user_version`):
    tags(upstream, repo, tag, accept) -> digest, media_type, size, confirmed_at
    locks(name) -> token, expires_at
    leases(name) -> holder, url, epoch, token, expires_at (a released lease keeps its row,
    expired, so its epoch keeps rising); replicas(id) -> url, expires_at (version 3)
    rate_limits(upstream) -> max_requests, remaining, window_seconds, observed_at
    accesses(digest) -> last_access;  access_repos(digest, repo)
    links(upstream, repo, digest), indexed by digest too; the catalog is read from it
    (version 1 had a `repositories` table filled from whatever names clients typed: dropped)
    pulls(repo) -> count
    (versions up to 3 kept tag lists in a `responses` table: dropped, they are
    `mirror.upstream.lists`' now)
    hosted_content(repo, digest), indexed by digest too; hosted_tags(repo, tag) -> digest,
    media_type, size; referrers(repo, subject, referrer) -> descriptor (JSON);
    uploads(id) -> repo, size, expires_at (version 4)
    hosted_content gains added_at, the unix time it was last added or touched (version 5;
    content from before reads as added at 0, long ago)
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from mirror.errors import RegistryError
from mirror.meta.store import (
    Access,
    CountedHealth,
    HostedManifest,
    Lease,
    Link,
    MetaStoreError,
    RateLimit,
    Replica,
    TagKey,
    TagRecord,
    Upload,
)
from mirror.reference import Digest

T = TypeVar("T")

SCHEMA_VERSION = 5
BUSY_TIMEOUT = 2.0  # seconds a statement waits for another process's write to finish

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS tags (
        upstream TEXT NOT NULL, repo TEXT NOT NULL, tag TEXT NOT NULL, accept TEXT NOT NULL,
        digest TEXT NOT NULL, media_type TEXT NOT NULL, size INTEGER NOT NULL,
        confirmed_at REAL NOT NULL,
        PRIMARY KEY (upstream, repo, tag, accept)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS locks (
        name TEXT PRIMARY KEY, token TEXT NOT NULL, expires_at REAL NOT NULL
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS leases (
        name TEXT PRIMARY KEY, holder TEXT NOT NULL, url TEXT, epoch INTEGER NOT NULL,
        token TEXT NOT NULL, expires_at REAL NOT NULL
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS replicas (
        id TEXT PRIMARY KEY, url TEXT, expires_at REAL NOT NULL
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS rate_limits (
        upstream TEXT PRIMARY KEY, max_requests INTEGER NOT NULL, remaining INTEGER NOT NULL,
        window_seconds INTEGER NOT NULL, observed_at REAL NOT NULL
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS accesses (
        digest TEXT PRIMARY KEY, last_access REAL NOT NULL
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS access_repos (
        digest TEXT NOT NULL, repo TEXT NOT NULL, PRIMARY KEY (digest, repo)
    ) WITHOUT ROWID
    """,
    """
    DROP TABLE IF EXISTS repositories
    """,
    """
    CREATE TABLE IF NOT EXISTS links (
        upstream TEXT NOT NULL, repo TEXT NOT NULL, digest TEXT NOT NULL,
        PRIMARY KEY (upstream, repo, digest)
    ) WITHOUT ROWID
    """,
    """
    CREATE INDEX IF NOT EXISTS links_by_digest ON links (digest)
    """,
    """
    CREATE TABLE IF NOT EXISTS pulls (
        repo TEXT PRIMARY KEY, count INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
    """
    DROP TABLE IF EXISTS responses
    """,
    """
    CREATE TABLE IF NOT EXISTS hosted_content (
        repo TEXT NOT NULL, digest TEXT NOT NULL, added_at REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (repo, digest)
    ) WITHOUT ROWID
    """,
    """
    CREATE INDEX IF NOT EXISTS hosted_content_by_digest ON hosted_content (digest)
    """,
    """
    CREATE TABLE IF NOT EXISTS hosted_tags (
        repo TEXT NOT NULL, tag TEXT NOT NULL, digest TEXT NOT NULL, media_type TEXT NOT NULL,
        size INTEGER NOT NULL, PRIMARY KEY (repo, tag)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS referrers (
        repo TEXT NOT NULL, subject TEXT NOT NULL, referrer TEXT NOT NULL,
        descriptor TEXT NOT NULL, PRIMARY KEY (repo, subject, referrer)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS uploads (
        id TEXT PRIMARY KEY, repo TEXT NOT NULL, size INTEGER NOT NULL, expires_at REAL NOT NULL
    ) WITHOUT ROWID
    """,
)


class SqliteMetaStore(CountedHealth):
    """A `MetaStore` in one SQLite file."""

    def __init__(
        self, conn: sqlite3.Connection, path: Path, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._conn = conn
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()

    @classmethod
    async def open(cls, path: Path, *, clock: Callable[[], float] = time.time) -> SqliteMetaStore:
        """Open (creating if missing) the database at `path`, schema included."""
        try:
            conn = await asyncio.to_thread(_connect, path)
        except sqlite3.Error as exc:
            raise MetaStoreError(f"SQLite {path}: {exc}") from exc
        return cls(conn, path, clock=clock)

    async def _run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run `operation` on the connection in a worker thread, errors as MetaStoreError."""
        with self._counted():
            return await asyncio.to_thread(self._locked, operation)

    def _locked(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                result = operation(self._conn)
                if isinstance(result, sqlite3.Cursor):
                    # Closed here, under the lock: a cursor freed later, on the event loop's
                    # thread, resets its statement there, racing the thread that holds the
                    # connection by then ("bad parameter or other API misuse", cpython#118172).
                    result.close()
                return result
            except sqlite3.Error as exc:
                raise MetaStoreError(f"SQLite {self._path}: {exc}") from exc

    async def ping(self) -> None:
        await self._run(lambda c: c.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        await self._run(lambda c: c.close())

    # --- tags -----------------------------------------------------------------------------

    async def get_tag(self, key: TagKey) -> TagRecord | None:
        row = await self._run(
            lambda c: c.execute(
                "SELECT digest, media_type, size, confirmed_at FROM tags"
                " WHERE upstream = ? AND repo = ? AND tag = ? AND accept = ?",
                (key.upstream, key.repo, key.tag, key.accept),
            ).fetchone()
        )
        return None if row is None else self._tag_record(row)

    async def put_tag(self, key: TagKey, record: TagRecord) -> None:
        await self._run(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO tags VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.upstream,
                    key.repo,
                    key.tag,
                    key.accept,
                    str(record.digest),
                    record.media_type,
                    record.size,
                    record.confirmed_at,
                ),
            )
        )

    async def delete_tag(self, key: TagKey) -> None:
        await self._run(
            lambda c: c.execute(
                "DELETE FROM tags WHERE upstream = ? AND repo = ? AND tag = ? AND accept = ?",
                (key.upstream, key.repo, key.tag, key.accept),
            )
        )

    async def tag_records(self, upstream: str, repo: str, tag: str) -> list[TagRecord]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT digest, media_type, size, confirmed_at FROM tags"
                " WHERE upstream = ? AND repo = ? AND tag = ?",
                (upstream, repo, tag),
            ).fetchall()
        )
        return [self._tag_record(row) for row in rows]

    async def list_tags(self) -> list[tuple[TagKey, TagRecord]]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT upstream, repo, tag, accept, digest, media_type, size, confirmed_at"
                " FROM tags ORDER BY upstream, repo, tag, accept"
            ).fetchall()
        )
        return [(TagKey(*row[:4]), self._tag_record(row[4:])) for row in rows]

    def _tag_record(self, row: tuple[Any, ...]) -> TagRecord:
        """The record of a row read, MetaStoreError (counted) if its digest does not parse."""
        digest, media_type, size, confirmed_at = row
        with self._counted():
            try:
                return TagRecord(Digest.parse(digest), media_type, size, confirmed_at)
            except (RegistryError, TypeError) as exc:
                raise MetaStoreError(f"corrupt tag record in SQLite {self._path}: {exc}") from exc

    # --- locks ----------------------------------------------------------------------------

    async def try_lock(self, name: str, ttl: float) -> str | None:
        token = secrets.token_hex(16)

        def take(c: sqlite3.Connection) -> bool:
            # One statement, so atomic across processes: insert, or take over an expired lock.
            now = self._clock()
            cursor = c.execute(
                "INSERT INTO locks VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE"
                " SET token = excluded.token, expires_at = excluded.expires_at"
                " WHERE locks.expires_at <= ?",
                (name, token, now + ttl, now),
            )
            return cursor.rowcount == 1

        return token if await self._run(take) else None

    async def unlock(self, name: str, token: str) -> None:
        await self._run(
            lambda c: c.execute("DELETE FROM locks WHERE name = ? AND token = ?", (name, token))
        )

    # --- leases ---------------------------------------------------------------------------

    async def acquire_lease(
        self, name: str, holder: str, url: str | None, ttl: float
    ) -> Lease | None:
        token = secrets.token_hex(16)

        def take(c: sqlite3.Connection) -> int | None:
            # One statement, so atomic across processes: a new lease, or the next epoch of
            # an expired (or released) one.
            now = self._clock()
            row = c.execute(
                "INSERT INTO leases VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT (name) DO UPDATE"
                " SET holder = excluded.holder, url = excluded.url, epoch = leases.epoch + 1,"
                " token = excluded.token, expires_at = excluded.expires_at"
                " WHERE leases.expires_at <= ? RETURNING epoch",
                (name, holder, url, token, now + ttl, now),
            ).fetchone()
            return None if row is None else int(row[0])

        epoch = await self._run(take)
        return None if epoch is None else Lease(holder, url, epoch, token)

    async def renew_lease(self, name: str, lease: Lease, ttl: float) -> bool:
        def extend(c: sqlite3.Connection) -> bool:
            now = self._clock()
            cursor = c.execute(
                "UPDATE leases SET expires_at = ? WHERE name = ? AND token = ? AND expires_at > ?",
                (now + ttl, name, lease.token, now),
            )
            return cursor.rowcount == 1

        return await self._run(extend)

    async def release_lease(self, name: str, lease: Lease) -> None:
        await self._run(
            lambda c: c.execute(
                "UPDATE leases SET expires_at = 0 WHERE name = ? AND token = ?",
                (name, lease.token),
            )
        )

    async def lease_holder(self, name: str) -> Lease | None:
        row = await self._run(
            lambda c: c.execute(
                "SELECT holder, url, epoch FROM leases WHERE name = ? AND expires_at > ?",
                (name, self._clock()),
            ).fetchone()
        )
        return None if row is None else Lease(str(row[0]), row[1], int(row[2]))

    # --- replicas -------------------------------------------------------------------------

    async def heartbeat(self, replica: Replica, ttl: float) -> None:
        await self._run(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO replicas VALUES (?, ?, ?)",
                (replica.id, replica.url, self._clock() + ttl),
            )
        )

    async def live_replicas(self) -> list[Replica]:
        def read(c: sqlite3.Connection) -> list[Replica]:
            now = self._clock()
            c.execute("DELETE FROM replicas WHERE expires_at <= ?", (now,))
            rows = c.execute("SELECT id, url FROM replicas ORDER BY id").fetchall()
            return [Replica(str(id), url) for id, url in rows]

        return await self._run(read)

    # --- rate limits ----------------------------------------------------------------------

    async def put_rate_limit(self, upstream: str, limit: RateLimit) -> None:
        await self._run(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO rate_limits VALUES (?, ?, ?, ?, ?)",
                (upstream, limit.limit, limit.remaining, limit.window, limit.observed_at),
            )
        )

    async def get_rate_limit(self, upstream: str) -> RateLimit | None:
        row = await self._run(
            lambda c: c.execute(
                "SELECT max_requests, remaining, window_seconds, observed_at FROM rate_limits"
                " WHERE upstream = ?",
                (upstream,),
            ).fetchone()
        )
        return None if row is None else RateLimit(*row)

    # --- access records -------------------------------------------------------------------

    async def record_access(self, accesses: Mapping[str, Access]) -> None:
        times = [(digest, a.last_access) for digest, a in accesses.items()]
        repos = [(digest, repo) for digest, a in accesses.items() for repo in a.repos]

        def merge(c: sqlite3.Connection) -> None:
            with _transaction(c):
                c.executemany(
                    "INSERT INTO accesses VALUES (?, ?) ON CONFLICT (digest) DO UPDATE"
                    " SET last_access = max(last_access, excluded.last_access)",
                    times,
                )
                c.executemany("INSERT OR IGNORE INTO access_repos VALUES (?, ?)", repos)

        await self._run(merge)

    async def get_access(self, digest: str) -> Access | None:
        def read(c: sqlite3.Connection) -> Access | None:
            row = c.execute("SELECT last_access FROM accesses WHERE digest = ?", (digest,))
            found = row.fetchone()
            if found is None:
                return None
            repos = c.execute("SELECT repo FROM access_repos WHERE digest = ?", (digest,))
            return Access(found[0], {repo for (repo,) in repos})

        return await self._run(read)

    async def list_accesses(self) -> dict[str, float]:
        rows = await self._run(
            lambda c: c.execute("SELECT digest, last_access FROM accesses").fetchall()
        )
        return dict(rows)

    async def delete_accesses(self, digests: Iterable[str]) -> None:
        rows = [(digest,) for digest in digests]

        def delete(c: sqlite3.Connection) -> None:
            with _transaction(c):
                c.executemany("DELETE FROM accesses WHERE digest = ?", rows)
                c.executemany("DELETE FROM access_repos WHERE digest = ?", rows)

        await self._run(delete)

    # --- links and the catalog -----------------------------------------------------------

    async def add_links(self, links: Iterable[Link]) -> None:
        rows = [(link.upstream, link.repo, link.digest) for link in links]
        await self._run(
            lambda c: c.executemany("INSERT OR IGNORE INTO links VALUES (?, ?, ?)", rows)
        )

    async def has_link(self, link: Link) -> bool:
        row = await self._run(
            lambda c: c.execute(
                "SELECT 1 FROM links WHERE upstream = ? AND repo = ? AND digest = ?",
                (link.upstream, link.repo, link.digest),
            ).fetchone()
        )
        return row is not None

    async def links_of(self, digest: str) -> list[Link]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT upstream, repo FROM links WHERE digest = ? ORDER BY upstream, repo",
                (digest,),
            ).fetchall()
        )
        return [Link(upstream, repo, digest) for upstream, repo in rows]

    async def remove_links(self, digests: Iterable[str]) -> None:
        rows = [(digest,) for digest in digests]
        await self._run(lambda c: c.executemany("DELETE FROM links WHERE digest = ?", rows))

    async def remove_repository(self, upstream: str, repo: str) -> None:
        await self._run(
            lambda c: c.execute(
                "DELETE FROM links WHERE upstream = ? AND repo = ?", (upstream, repo)
            )
        )

    async def list_repositories(
        self, upstream: str, *, last: str = "", n: int | None = None
    ) -> list[str]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT DISTINCT repo FROM links WHERE upstream = ? AND repo > ?"
                " ORDER BY repo LIMIT ?",
                (upstream, last, -1 if n is None else n),
            ).fetchall()
        )
        return [repo for (repo,) in rows]

    # --- pull counts ----------------------------------------------------------------------

    async def record_pulls(self, pulls: Mapping[str, int]) -> None:
        rows = list(pulls.items())
        await self._run(
            lambda c: c.executemany(
                "INSERT INTO pulls VALUES (?, ?)"
                " ON CONFLICT (repo) DO UPDATE SET count = count + excluded.count",
                rows,
            )
        )

    async def top_repositories(self, limit: int) -> list[tuple[str, int]]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT repo, count FROM pulls ORDER BY count DESC, repo LIMIT ?", (limit,)
            ).fetchall()
        )
        return [(repo, count) for repo, count in rows]

    # --- hosted repositories --------------------------------------------------------------

    async def add_hosted(self, repo: str, digests: Iterable[str]) -> None:
        batch = list(digests)

        def add(c: sqlite3.Connection) -> None:
            now = self._clock()
            c.executemany(
                "INSERT INTO hosted_content VALUES (?, ?, ?) ON CONFLICT (repo, digest)"
                " DO UPDATE SET added_at = excluded.added_at",
                [(repo, digest, now) for digest in batch],
            )

        await self._run(add)

    async def touch_hosted(self, repo: str, digests: Iterable[str]) -> set[str]:
        batch = list(digests)

        def touch(c: sqlite3.Connection) -> set[str]:
            now = self._clock()
            held = set()
            with _transaction(c):
                for digest in batch:
                    cursor = c.execute(
                        "UPDATE hosted_content SET added_at = ? WHERE repo = ? AND digest = ?",
                        (now, repo, digest),
                    )
                    if cursor.rowcount:
                        held.add(digest)
            return held

        return await self._run(touch)

    async def hosted_holds(self, repo: str, digest: str) -> bool:
        row = await self._run(
            lambda c: c.execute(
                "SELECT 1 FROM hosted_content WHERE repo = ? AND digest = ?", (repo, digest)
            ).fetchone()
        )
        return row is not None

    async def hosted_digests(self) -> set[str]:
        rows = await self._run(
            lambda c: c.execute("SELECT DISTINCT digest FROM hosted_content").fetchall()
        )
        return {digest for (digest,) in rows}

    async def all_hosted_repositories(self) -> list[str]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT repo FROM hosted_content UNION SELECT repo FROM hosted_tags ORDER BY repo"
            ).fetchall()
        )
        return [repo for (repo,) in rows]

    async def hosted_content(self, repo: str) -> dict[str, float]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT digest, added_at FROM hosted_content WHERE repo = ?", (repo,)
            ).fetchall()
        )
        return dict(rows)

    async def remove_hosted(
        self, repo: str, digests: Iterable[str], *, added_before: float | None = None
    ) -> set[str]:
        batch = list(digests)
        before = float("inf") if added_before is None else added_before

        def remove(c: sqlite3.Connection) -> set[str]:
            removed = set()
            with _transaction(c):
                for digest in batch:
                    cursor = c.execute(
                        "DELETE FROM hosted_content WHERE repo = ? AND digest = ? AND added_at < ?",
                        (repo, digest, before),
                    )
                    if cursor.rowcount:
                        removed.add(digest)
                c.executemany(
                    "DELETE FROM hosted_tags WHERE repo = ? AND digest = ?",
                    [(repo, digest) for digest in removed],
                )
            return removed

        return await self._run(remove)

    async def put_hosted_tag(self, repo: str, tag: str, manifest: HostedManifest) -> None:
        row = (repo, tag, str(manifest.digest), manifest.media_type, manifest.size)
        await self._run(
            lambda c: c.execute("INSERT OR REPLACE INTO hosted_tags VALUES (?, ?, ?, ?, ?)", row)
        )

    async def get_hosted_tag(self, repo: str, tag: str) -> HostedManifest | None:
        row = await self._run(
            lambda c: c.execute(
                "SELECT digest, media_type, size FROM hosted_tags WHERE repo = ? AND tag = ?",
                (repo, tag),
            ).fetchone()
        )
        return None if row is None else self._hosted_manifest(repo, tag, row)

    def _hosted_manifest(self, repo: str, tag: str, row: Iterable[Any]) -> HostedManifest:
        digest, media_type, size = row
        with self._counted():
            try:
                return HostedManifest(Digest.parse(digest), media_type, size)
            except RegistryError as exc:
                raise MetaStoreError(f"corrupt hosted tag {repo}:{tag}: {exc}") from exc

    async def hosted_tags(self, repo: str, *, last: str = "", n: int | None = None) -> list[str]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT tag FROM hosted_tags WHERE repo = ? AND tag > ? ORDER BY tag LIMIT ?",
                (repo, last, -1 if n is None else n),
            ).fetchall()
        )
        return [tag for (tag,) in rows]

    async def hosted_repositories(self, *, last: str = "", n: int | None = None) -> list[str]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT DISTINCT repo FROM hosted_tags WHERE repo > ? ORDER BY repo LIMIT ?",
                (last, -1 if n is None else n),
            ).fetchall()
        )
        return [repo for (repo,) in rows]

    async def hosted_tagged(self, repo: str) -> dict[str, HostedManifest]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT tag, digest, media_type, size FROM hosted_tags WHERE repo = ?", (repo,)
            ).fetchall()
        )
        return {tag: self._hosted_manifest(repo, tag, rest) for tag, *rest in rows}

    async def delete_hosted_tag(self, repo: str, tag: str) -> bool:
        return await self._run(
            lambda c: (
                c.execute(
                    "DELETE FROM hosted_tags WHERE repo = ? AND tag = ?", (repo, tag)
                ).rowcount
                == 1
            )
        )

    async def add_referrer(self, repo: str, subject: str, referrer: str, descriptor: str) -> None:
        row = (repo, subject, referrer, descriptor)
        await self._run(
            lambda c: c.execute("INSERT OR REPLACE INTO referrers VALUES (?, ?, ?, ?)", row)
        )

    async def referrers(self, repo: str, subject: str) -> list[str]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT descriptor FROM referrers WHERE repo = ? AND subject = ? ORDER BY referrer",
                (repo, subject),
            ).fetchall()
        )
        return [descriptor for (descriptor,) in rows]

    async def remove_referrer(self, repo: str, subject: str, referrer: str) -> None:
        await self._run(
            lambda c: c.execute(
                "DELETE FROM referrers WHERE repo = ? AND subject = ? AND referrer = ?",
                (repo, subject, referrer),
            )
        )

    # --- upload sessions ------------------------------------------------------------------

    async def put_upload(self, upload: Upload, ttl: float) -> None:
        def put(c: sqlite3.Connection) -> None:
            now = self._clock()
            with _transaction(c):
                c.execute("DELETE FROM uploads WHERE expires_at <= ?", (now,))
                c.execute(
                    "INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?)",
                    (upload.id, upload.repo, upload.size, now + ttl),
                )

        await self._run(put)

    async def get_upload(self, upload_id: str) -> Upload | None:
        row = await self._run(
            lambda c: c.execute(
                "SELECT repo, size FROM uploads WHERE id = ? AND expires_at > ?",
                (upload_id, self._clock()),
            ).fetchone()
        )
        return None if row is None else Upload(upload_id, row[0], row[1])

    async def delete_upload(self, upload_id: str) -> None:
        await self._run(lambda c: c.execute("DELETE FROM uploads WHERE id = ?", (upload_id,)))


def _connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, schema in place."""
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        # Still consistent in WAL mode; a power failure may lose the last commits, which for
        # metadata only means asking the upstream again.
        conn.execute("PRAGMA synchronous = NORMAL")
        with _transaction(conn):
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise MetaStoreError(
                    f"SQLite {path}: schema version {version} is newer than this mirror's"
                    f" {SCHEMA_VERSION}"
                )
            for statement in _SCHEMA:
                conn.execute(statement)
            _add_column(conn, "hosted_content", "added_at REAL NOT NULL DEFAULT 0")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn


def _add_column(conn: sqlite3.Connection, table: str, column: str) -> None:
    """Add `column` (its definition) to a table created by an older version, once."""
    name = column.split()[0]
    if name not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """`BEGIN IMMEDIATE` ... `COMMIT`, or `ROLLBACK` on error. Immediate, so a writer that
    has to wait for another process waits at the start, under the busy timeout, instead of
    failing halfway."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
