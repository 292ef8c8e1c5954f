"""The shared metadata store: Redis, for several mirror processes or nodes.

Every key starts with the configured prefix (`mirror:` by default), so mirrors, or whole
deployments, can share one Redis. Below, `P` is that prefix:

    P tag:<upstream>/<repo>:<tag>:<accept>  JSON TagRecord; reads like an image reference,
                                             and is unambiguous because upstream has no `/`
                                             and repo and tag have no `:`
    P lock:<name>                            the holder's token, with the lock's TTL
    P lease:<name>                           hash {holder, url, epoch, token}, with the
                                             lease's TTL
    P lease-epoch:<name>                     the lease's last epoch (INCR on acquisition;
                                             kept a day after the last one)
    P replicas                               sorted set: replica id scored by the time (ms,
                                             Redis's clock) its last heartbeat runs out
    P replica-urls                           hash: replica id -> advertise URL ("" for none)
    P ratelimit:<upstream>                   JSON RateLimit
    P access                                 sorted set: digest scored by last access time
    P access-repos:<digest>                  set of repositories the digest was pulled from
    P links:<digest>                         set of `<upstream>/<repo>` holding the digest
    P linked:<upstream>/<repo>               set of digests the repository holds
    P catalog:<upstream>                     sorted set (all scores 0, so ordered by name)
                                             of the repositories with a link: paged with
                                             ZRANGEBYLEX
    P pulls                                  sorted set: qualified repository by pulls
    P hosted:<repo>                          sorted set of the digests hosted `repo` holds,
                                             scored by when each was last added or touched
                                             (unix seconds, Redis's clock)
    P hosted-tag:<repo>                      hash: tag -> JSON HostedManifest
    P hosted-tags:<repo>                     sorted set of those tags (scores 0: paged by name)
    P hosted-repos                           sorted set (scores 0: read in name order) of the
                                             hosted repositories given content or a tag; the
                                             catalog skips one whose hosted-tags key is gone
    P referrers:<repo>@<subject>             hash: referrer digest -> descriptor JSON
    P upload:<id>                            JSON Upload, with the session's TTL

The access times are one sorted set so the oldest digests can be found in one range query;
`ZADD GT` keeps the later of two times, so concurrent batches merge without a script.
Needs Redis 6.2 or newer. The three link keys change together (a transaction to add, a
script to remove), so a repository is in the catalog exactly while it has a link; the
scripts name keys they compute, which a single Redis (not a cluster) allows.

Expiry (locks, leases) is Redis's own, by its server's clock, which every process
sharing it agrees on; so unlike SQLite this store takes no clock.

Timeouts are short: a stalled Redis must cost a request about a second, not hang it. A
command that fails on a dead connection (Redis restarted) is retried once on a new one, so
the client reconnects by itself.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import astuple
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

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

CONNECT_TIMEOUT = 1.0  # seconds: a Redis that is down refuses or times out at once
# Seconds for one reply. Longer than the connect: a reply is late when this process's own
# event loop is busy (a loaded 2-core replica saw 1 s passed), and a false "unavailable"
# costs the fallback window (links unknown, upstream HEADs) for nothing. go-redis's default.
COMMAND_TIMEOUT = 3.0

# Delete the lock only if it still holds our token: a holder whose lock expired must not
# release the next holder's.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: the lease, its epoch. ARGV: holder, url, token, ttl (ms), the epoch's keep (ms).
# Taken only when free, with the next epoch; returns that epoch, or 0 when held.
_ACQUIRE_LEASE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
    return 0
end
local epoch = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'url', ARGV[2], 'epoch', epoch,
           'token', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return epoch
"""

# KEYS: the lease. ARGV: token, ttl (ms). Extended only by the acquisition holding it.
_RENEW_LEASE = """
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: the lease. ARGV: token. Deleted only by the acquisition holding it.
_RELEASE_LEASE = """
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: the replicas, their URLs. ARGV: id, url, ttl (ms). Timed by Redis's clock, which
# every replica shares.
_HEARTBEAT = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 0
"""

# KEYS: the replicas, their URLs. The expired ones are forgotten; the live ones returned as
# id, url, id, url, ...
_LIVE_REPLICAS = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms)) do
    redis.call('HDEL', KEYS[2], gone)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
local found = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    table.insert(found, id)
    table.insert(found, redis.call('HGET', KEYS[2], id) or '')
end
return found
"""

# The stamp of hosted content: now by Redis's clock, in unix seconds.
_NOW = """
local now = redis.call('TIME')
local stamp = tonumber(now[1]) + tonumber(now[2]) / 1000000
"""

# KEYS: the repository's content, the hosted repositories. ARGV: the repository, digests.
_ADD_HOSTED = (
    _NOW
    + """
for i = 2, #ARGV do
    redis.call('ZADD', KEYS[1], stamp, ARGV[i])
end
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 0
"""
)

# KEYS: the repository's content. ARGV: digests. Those held are stamped now and returned.
_TOUCH_HOSTED = (
    _NOW
    + """
local held = {}
for i = 1, #ARGV do
    if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
        redis.call('ZADD', KEYS[1], stamp, ARGV[i])
        table.insert(held, ARGV[i])
    end
end
return held
"""
)

# KEYS: the repository's content, its tags' records, its tag names. ARGV: the stamp content
# must be older than to go ("" for any), then digests. The tags naming a digest removed go
# too; returns the digests removed.
_REMOVE_HOSTED = """
local before = tonumber(ARGV[1])
local removed, gone = {}, {}
for i = 2, #ARGV do
    local stamp = redis.call('ZSCORE', KEYS[1], ARGV[i])
    if stamp and (before == nil or tonumber(stamp) < before) then
        redis.call('ZREM', KEYS[1], ARGV[i])
        table.insert(removed, ARGV[i])
        gone[ARGV[i]] = true
    end
end
if #removed > 0 then
    local tags = redis.call('HGETALL', KEYS[2])
    for j = 1, #tags, 2 do
        local ok, record = pcall(cjson.decode, tags[j + 1])
        if ok and type(record) == 'table' and gone[record['digest']] then
            redis.call('HDEL', KEYS[2], tags[j])
            redis.call('ZREM', KEYS[3], tags[j])
        end
    end
end
return removed
"""

# A lease's epoch outlives the lease by this much: long past any stale holder's work.
LEASE_EPOCH_KEEP = 86_400.0  # seconds

# ARGV: the key prefix, then digests. Each digest's links go, and a repository left without
# links leaves its upstream's catalog.
_REMOVE_LINKS = """
local prefix = ARGV[1]
for i = 2, #ARGV do
    local digest = ARGV[i]
    local holders = prefix .. 'links:' .. digest
    for _, member in ipairs(redis.call('SMEMBERS', holders)) do
        local held = prefix .. 'linked:' .. member
        redis.call('SREM', held, digest)
        if redis.call('SCARD', held) == 0 then
            local slash = string.find(member, '/', 1, true)
            redis.call('ZREM', prefix .. 'catalog:' .. string.sub(member, 1, slash - 1),
                       string.sub(member, slash + 1))
        end
    end
    redis.call('DEL', holders)
end
return 0
"""

# ARGV: the key prefix, the upstream, the repository: every link of that repository goes.
_REMOVE_REPOSITORY = """
local prefix, upstream, repo = ARGV[1], ARGV[2], ARGV[3]
local member = upstream .. '/' .. repo
local held = prefix .. 'linked:' .. member
for _, digest in ipairs(redis.call('SMEMBERS', held)) do
    redis.call('SREM', prefix .. 'links:' .. digest, member)
end
redis.call('DEL', held)
redis.call('ZREM', prefix .. 'catalog:' .. upstream, repo)
return 0
"""


def masked_url(url: str) -> str:
    """`url` with any password replaced by `***`: safe for logs and error messages."""
    parts = urlsplit(url)
    masked = url
    if parts.password is not None:
        userinfo, _, host = parts.netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
        masked = masked.replace(f"//{parts.netloc}", f"//{netloc}", 1)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if any(name == "password" for name, _ in pairs):
        query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*")
        masked = masked.replace(f"?{parts.query}", f"?{query}", 1)
    return masked


class RedisMetaStore(CountedHealth):
    """A `MetaStore` in Redis, every key under `key_prefix`."""

    def __init__(self, client: Redis, key_prefix: str) -> None:
        self._redis = client
        self._prefix = key_prefix
        self._unlock = client.register_script(_UNLOCK)
        self._remove_links = client.register_script(_REMOVE_LINKS)
        self._remove_repository = client.register_script(_REMOVE_REPOSITORY)
        self._acquire_lease = client.register_script(_ACQUIRE_LEASE)
        self._renew_lease = client.register_script(_RENEW_LEASE)
        self._release_lease = client.register_script(_RELEASE_LEASE)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._live_replicas = client.register_script(_LIVE_REPLICAS)
        self._add_hosted = client.register_script(_ADD_HOSTED)
        self._touch_hosted = client.register_script(_TOUCH_HOSTED)
        self._remove_hosted = client.register_script(_REMOVE_HOSTED)

    @classmethod
    async def open(cls, url: str, key_prefix: str) -> RedisMetaStore:
        """Connect and ping; MetaStoreError naming the (masked) URL if Redis does not answer."""
        where = masked_url(url)
        try:
            client = Redis.from_url(
                url,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=COMMAND_TIMEOUT,
                retry=Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)),
            )
        except ValueError as exc:
            raise MetaStoreError(f"bad Redis URL {where}: {_scrub(url, exc)}") from None
        store = cls(client, key_prefix)
        try:
            await store.ping()
        except MetaStoreError as exc:
            await client.aclose()
            raise MetaStoreError(f"Redis at {where} is unreachable: {_scrub(url, exc)}") from None
        return store

    def _key(self, *parts: str) -> str:
        return self._prefix + "".join(parts)

    @contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        """Redis failures (including socket errors and timeouts) as MetaStoreError."""
        with self._counted():
            try:
                yield
            except (RedisError, OSError) as exc:
                message = f"Redis {operation} failed: {exc or type(exc).__name__}"
                raise MetaStoreError(message) from exc

    @contextmanager
    def _corrupt(self, key: str) -> Iterator[None]:
        """A record that does not decode as MetaStoreError naming its key."""
        with self._counted():
            try:
                yield
            except (ValueError, KeyError, TypeError, AttributeError, RegistryError) as exc:
                raise MetaStoreError(f"corrupt record {key!r} in Redis: {exc!r}") from exc

    def _tag_record(self, name: str, raw: Any) -> TagRecord:
        with self._corrupt(name):
            data = json.loads(raw)
            return TagRecord(
                digest=Digest.parse(data["digest"]),
                media_type=str(data["media_type"]),
                size=int(data["size"]),
                confirmed_at=float(data["confirmed_at"]),
            )

    async def ping(self) -> None:
        with self._errors("ping"):
            await self._redis.ping()

    async def close(self) -> None:
        with self._errors("close"):
            await self._redis.aclose()

    # --- tags -----------------------------------------------------------------------------

    def _tag_key(self, key: TagKey) -> str:
        return self._key("tag:", key.upstream, "/", key.repo, ":", key.tag, ":", key.accept)

    async def get_tag(self, key: TagKey) -> TagRecord | None:
        name = self._tag_key(key)
        with self._errors("get_tag"):
            raw = await self._redis.get(name)
        return None if raw is None else self._tag_record(name, raw)

    async def tag_records(self, upstream: str, repo: str, tag: str) -> list[TagRecord]:
        # A glob over the Accept class; the names themselves can hold no glob character
        # except an IPv6 host's brackets.
        stem = _glob_escape(self._key("tag:", upstream, "/", repo, ":", tag, ":"))
        with self._errors("tag_records"):
            names = [_text(n) async for n in self._redis.scan_iter(match=stem + "*", count=500)]
            values = await self._redis.mget(names) if names else []
        return [self._tag_record(name, raw) for name, raw in zip(names, values, strict=True) if raw]

    async def list_tags(self) -> list[tuple[TagKey, TagRecord]]:
        prefix = self._key("tag:")
        found: list[tuple[TagKey, TagRecord]] = []
        with self._errors("list_tags"):
            names = [_text(n) async for n in self._redis.scan_iter(match=prefix + "*", count=500)]
            values = await self._redis.mget(names) if names else []
        for name, raw in zip(names, values, strict=True):
            if raw is None:
                continue  # deleted since the scan
            # <upstream>/<repo>:<tag>:<accept>: the upstream has no "/", the rest no ":".
            upstream, _, rest = name.removeprefix(prefix).partition("/")
            repo, tag, accept = rest.split(":", 2)
            found.append((TagKey(upstream, repo, tag, accept), self._tag_record(name, raw)))
        return sorted(found, key=lambda item: astuple(item[0]))

    async def put_tag(self, key: TagKey, record: TagRecord) -> None:
        value = json.dumps(
            {
                "digest": str(record.digest),
                "media_type": record.media_type,
                "size": record.size,
                "confirmed_at": record.confirmed_at,
            }
        )
        with self._errors("put_tag"):
            await self._redis.set(self._tag_key(key), value)

    async def delete_tag(self, key: TagKey) -> None:
        with self._errors("delete_tag"):
            await self._redis.delete(self._tag_key(key))

    # --- locks ----------------------------------------------------------------------------

    async def try_lock(self, name: str, ttl: float) -> str | None:
        token = secrets.token_hex(16)
        with self._errors("try_lock"):
            taken = await self._redis.set(self._key("lock:", name), token, nx=True, px=_ms(ttl))
        return token if taken else None

    async def unlock(self, name: str, token: str) -> None:
        with self._errors("unlock"):
            await self._unlock(keys=[self._key("lock:", name)], args=[token])

    # --- leases ---------------------------------------------------------------------------

    async def acquire_lease(
        self, name: str, holder: str, url: str | None, ttl: float
    ) -> Lease | None:
        token = secrets.token_hex(16)
        keys = [self._key("lease:", name), self._key("lease-epoch:", name)]
        args: list[str | int] = [holder, url or "", token, _ms(ttl), _ms(LEASE_EPOCH_KEEP)]
        with self._errors("acquire_lease"):
            epoch = int(await self._acquire_lease(keys=keys, args=args))
        return Lease(holder, url, epoch, token) if epoch else None

    async def renew_lease(self, name: str, lease: Lease, ttl: float) -> bool:
        with self._errors("renew_lease"):
            renewed = await self._renew_lease(
                keys=[self._key("lease:", name)], args=[lease.token, _ms(ttl)]
            )
        return bool(renewed)

    async def release_lease(self, name: str, lease: Lease) -> None:
        with self._errors("release_lease"):
            await self._release_lease(keys=[self._key("lease:", name)], args=[lease.token])

    async def lease_holder(self, name: str) -> Lease | None:
        key = self._key("lease:", name)
        with self._errors("lease_holder"):
            fields = await self._redis.hgetall(key)
        if not fields:
            return None
        with self._corrupt(key):
            values = {_text(k): _text(v) for k, v in fields.items()}
            return Lease(values["holder"], values["url"] or None, int(values["epoch"]))

    # --- replicas -------------------------------------------------------------------------

    def _replica_keys(self) -> list[str]:
        return [self._key("replicas"), self._key("replica-urls")]

    async def heartbeat(self, replica: Replica, ttl: float) -> None:
        with self._errors("heartbeat"):
            await self._heartbeat(
                keys=self._replica_keys(), args=[replica.id, replica.url or "", _ms(ttl)]
            )

    async def live_replicas(self) -> list[Replica]:
        with self._errors("live_replicas"):
            flat = [_text(item) for item in await self._live_replicas(keys=self._replica_keys())]
        found = [Replica(id, url or None) for id, url in zip(flat[::2], flat[1::2], strict=True)]
        return sorted(found)

    # --- rate limits ----------------------------------------------------------------------

    async def put_rate_limit(self, upstream: str, limit: RateLimit) -> None:
        value = json.dumps(
            {
                "limit": limit.limit,
                "remaining": limit.remaining,
                "window": limit.window,
                "observed_at": limit.observed_at,
            }
        )
        with self._errors("put_rate_limit"):
            await self._redis.set(self._key("ratelimit:", upstream), value)

    async def get_rate_limit(self, upstream: str) -> RateLimit | None:
        name = self._key("ratelimit:", upstream)
        with self._errors("get_rate_limit"):
            raw = await self._redis.get(name)
        if raw is None:
            return None
        with self._corrupt(name):
            data = json.loads(raw)
            return RateLimit(
                limit=int(data["limit"]),
                remaining=int(data["remaining"]),
                window=int(data["window"]),
                observed_at=float(data["observed_at"]),
            )

    # --- access records -------------------------------------------------------------------

    async def record_access(self, accesses: Mapping[str, Access]) -> None:
        if not accesses:
            return
        times = {digest: access.last_access for digest, access in accesses.items()}
        with self._errors("record_access"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zadd(self._key("access"), times, gt=True)
                for digest, access in accesses.items():
                    if access.repos:
                        pipe.sadd(self._key("access-repos:", digest), *access.repos)
                await pipe.execute()

    async def get_access(self, digest: str) -> Access | None:
        with self._errors("get_access"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zscore(self._key("access"), digest)
                pipe.smembers(self._key("access-repos:", digest))
                last_access, repos = await pipe.execute()
        if last_access is None:
            return None
        return Access(float(last_access), {_text(repo) for repo in repos})

    async def list_accesses(self) -> dict[str, float]:
        with self._errors("list_accesses"):
            rows = await self._redis.zrange(self._key("access"), 0, -1, withscores=True)
        return {_text(row[0]): float(row[1]) for row in rows}

    async def delete_accesses(self, digests: Iterable[str]) -> None:
        names = list(digests)
        if not names:
            return
        with self._errors("delete_accesses"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self._key("access"), *names)
                pipe.delete(*(self._key("access-repos:", digest) for digest in names))
                await pipe.execute()

    # --- links and the catalog -----------------------------------------------------------

    async def add_links(self, links: Iterable[Link]) -> None:
        batch = list(links)
        if not batch:
            return
        with self._errors("add_links"):
            async with self._redis.pipeline(transaction=True) as pipe:
                for link in batch:
                    member = f"{link.upstream}/{link.repo}"
                    pipe.sadd(self._key("links:", link.digest), member)
                    pipe.sadd(self._key("linked:", member), link.digest)
                    pipe.zadd(self._key("catalog:", link.upstream), {link.repo: 0})
                await pipe.execute()

    async def has_link(self, link: Link) -> bool:
        member = f"{link.upstream}/{link.repo}"
        with self._errors("has_link"):
            return bool(await self._redis.sismember(self._key("links:", link.digest), member))

    async def links_of(self, digest: str) -> list[Link]:
        with self._errors("links_of"):
            members = await self._redis.smembers(self._key("links:", digest))
        found = []
        for member in members:
            # <upstream>/<repo>: the upstream has no "/".
            upstream, _, repo = _text(member).partition("/")
            found.append(Link(upstream, repo, digest))
        return sorted(found)

    async def remove_links(self, digests: Iterable[str]) -> None:
        names = list(digests)
        if not names:
            return
        with self._errors("remove_links"):
            await self._remove_links(args=[self._prefix, *names])

    async def remove_repository(self, upstream: str, repo: str) -> None:
        with self._errors("remove_repository"):
            await self._remove_repository(args=[self._prefix, upstream, repo])

    async def list_repositories(
        self, upstream: str, *, last: str = "", n: int | None = None
    ) -> list[str]:
        if n == 0:
            return []
        after = f"({last}" if last else "-"
        with self._errors("list_repositories"):
            repos = await self._redis.zrangebylex(
                self._key("catalog:", upstream), after, "+", start=0 if n else None, num=n
            )
        return [_text(repo) for repo in repos]

    # --- pull counts ----------------------------------------------------------------------

    async def record_pulls(self, pulls: Mapping[str, int]) -> None:
        if not pulls:
            return
        with self._errors("record_pulls"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for repo, count in pulls.items():
                    pipe.zincrby(self._key("pulls"), count, repo)
                await pipe.execute()

    async def top_repositories(self, limit: int) -> list[tuple[str, int]]:
        with self._errors("top_repositories"):
            rows = await self._redis.zrevrange(self._key("pulls"), 0, limit - 1, withscores=True)
        return [(_text(row[0]), int(row[1])) for row in rows]

    # --- hosted repositories --------------------------------------------------------------

    async def add_hosted(self, repo: str, digests: Iterable[str]) -> None:
        batch = list(digests)
        if not batch:
            return
        keys = [self._key("hosted:", repo), self._key("hosted-repos")]
        with self._errors("add_hosted"):
            await self._add_hosted(keys=keys, args=[repo, *batch])

    async def touch_hosted(self, repo: str, digests: Iterable[str]) -> set[str]:
        batch = list(digests)
        if not batch:
            return set()
        with self._errors("touch_hosted"):
            held = await self._touch_hosted(keys=[self._key("hosted:", repo)], args=batch)
        return {_text(digest) for digest in held}

    async def hosted_holds(self, repo: str, digest: str) -> bool:
        with self._errors("hosted_holds"):
            return await self._redis.zscore(self._key("hosted:", repo), digest) is not None

    async def hosted_digests(self) -> set[str]:
        repos = await self.all_hosted_repositories()
        with self._errors("hosted_digests"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for repo in repos:
                    pipe.zrange(self._key("hosted:", repo), 0, -1)
                held = await pipe.execute()
        return {_text(digest) for digests in held for digest in digests}

    async def all_hosted_repositories(self) -> list[str]:
        with self._errors("all_hosted_repositories"):
            repos = await self._redis.zrange(self._key("hosted-repos"), 0, -1)
        return [_text(repo) for repo in repos]

    async def hosted_content(self, repo: str) -> dict[str, float]:
        with self._errors("hosted_content"):
            rows = await self._redis.zrange(self._key("hosted:", repo), 0, -1, withscores=True)
        return {_text(row[0]): float(row[1]) for row in rows}

    async def remove_hosted(
        self, repo: str, digests: Iterable[str], *, added_before: float | None = None
    ) -> set[str]:
        batch = list(digests)
        if not batch:
            return set()
        keys = [self._key(kind, repo) for kind in ("hosted:", "hosted-tag:", "hosted-tags:")]
        before = "" if added_before is None else repr(added_before)
        with self._errors("remove_hosted"):
            removed = await self._remove_hosted(keys=keys, args=[before, *batch])
        return {_text(digest) for digest in removed}

    async def put_hosted_tag(self, repo: str, tag: str, manifest: HostedManifest) -> None:
        value = json.dumps(
            {
                "digest": str(manifest.digest),
                "media_type": manifest.media_type,
                "size": manifest.size,
            }
        )
        with self._errors("put_hosted_tag"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._key("hosted-tag:", repo), tag, value)
                pipe.zadd(self._key("hosted-tags:", repo), {tag: 0})
                pipe.zadd(self._key("hosted-repos"), {repo: 0})
                await pipe.execute()

    async def get_hosted_tag(self, repo: str, tag: str) -> HostedManifest | None:
        name = self._key("hosted-tag:", repo)
        with self._errors("get_hosted_tag"):
            raw = await self._redis.hget(name, tag)
        if raw is None:
            return None
        return self._hosted_manifest(f"{name} {tag}", raw)

    def _hosted_manifest(self, name: str, raw: Any) -> HostedManifest:
        with self._corrupt(name):
            data = json.loads(raw)
            return HostedManifest(
                Digest.parse(data["digest"]), str(data["media_type"]), int(data["size"])
            )

    async def hosted_tags(self, repo: str, *, last: str = "", n: int | None = None) -> list[str]:
        if n == 0:
            return []
        after = f"({last}" if last else "-"
        with self._errors("hosted_tags"):
            tags = await self._redis.zrangebylex(
                self._key("hosted-tags:", repo), after, "+", start=0 if n else None, num=n
            )
        return [_text(tag) for tag in tags]

    async def hosted_repositories(self, *, last: str = "", n: int | None = None) -> list[str]:
        found: list[str] = []
        while n is None or len(found) < n:
            want = None if n is None else n - len(found)
            after = f"({last}" if last else "-"
            with self._errors("hosted_repositories"):
                page = [
                    _text(repo)
                    for repo in await self._redis.zrangebylex(
                        self._key("hosted-repos"), after, "+", start=0 if want else None, num=want
                    )
                ]
                if not page:
                    break
                async with self._redis.pipeline(transaction=False) as pipe:
                    for repo in page:
                        pipe.exists(self._key("hosted-tags:", repo))
                    tagged = await pipe.execute()
            found += [repo for repo, exists in zip(page, tagged, strict=True) if exists]
            if want is None:
                break
            last = page[-1]
        return found

    async def hosted_tagged(self, repo: str) -> dict[str, HostedManifest]:
        name = self._key("hosted-tag:", repo)
        with self._errors("hosted_tagged"):
            found = await self._redis.hgetall(name)
        return {
            _text(tag): self._hosted_manifest(f"{name} {_text(tag)}", raw)
            for tag, raw in found.items()
        }

    async def delete_hosted_tag(self, repo: str, tag: str) -> bool:
        with self._errors("delete_hosted_tag"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hdel(self._key("hosted-tag:", repo), tag)
                pipe.zrem(self._key("hosted-tags:", repo), tag)
                deleted, _ = await pipe.execute()
        return bool(deleted)

    async def add_referrer(self, repo: str, subject: str, referrer: str, descriptor: str) -> None:
        with self._errors("add_referrer"):
            await self._redis.hset(
                self._key("referrers:", repo, "@", subject), referrer, descriptor
            )

    async def referrers(self, repo: str, subject: str) -> list[str]:
        with self._errors("referrers"):
            found = await self._redis.hgetall(self._key("referrers:", repo, "@", subject))
        return [_text(found[key]) for key in sorted(found, key=_text)]

    async def remove_referrer(self, repo: str, subject: str, referrer: str) -> None:
        with self._errors("remove_referrer"):
            await self._redis.hdel(self._key("referrers:", repo, "@", subject), referrer)

    # --- upload sessions ------------------------------------------------------------------

    async def put_upload(self, upload: Upload, ttl: float) -> None:
        value = json.dumps({"repo": upload.repo, "size": upload.size})
        with self._errors("put_upload"):
            await self._redis.set(self._key("upload:", upload.id), value, px=_ms(ttl))

    async def get_upload(self, upload_id: str) -> Upload | None:
        name = self._key("upload:", upload_id)
        with self._errors("get_upload"):
            raw = await self._redis.get(name)
        if raw is None:
            return None
        with self._corrupt(name):
            data = json.loads(raw)
            return Upload(upload_id, str(data["repo"]), int(data["size"]))

    async def delete_upload(self, upload_id: str) -> None:
        with self._errors("delete_upload"):
            await self._redis.delete(self._key("upload:", upload_id))


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def _ms(seconds: float) -> int:
    """A TTL in whole milliseconds, at least one (Redis rejects zero)."""
    return max(1, round(seconds * 1000))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _scrub(url: str, exc: Exception) -> str:
    """The error's text without the URL's passwords, should a library ever echo them."""
    text = str(exc) or type(exc).__name__
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    for password in [parts.password, *(value for name, value in query if name == "password")]:
        if password:
            text = text.replace(password, "***")
    return text
