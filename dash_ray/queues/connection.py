"""Redis connections: one place that builds clients from a URL.

A URL is `redis://` / `rediss://`, or `redis+sentinel://[:password@]host:port[,host:port...]/
<primary name>[/<db>][?sentinel_password=...]` for a Sentinel-managed Redis: the client asks the sentinels for the
current primary before it connects, and a connection that meets a demoted primary (READONLY, or
its blocking wait ended by the failover) is dropped and made again to the new one. Every part of
dash-ray (gateway, consumers, workers, pub/sub, scripts: a Batch reloads a script the new primary
answers NOSCRIPT to) connects through here, so each follows a failover by itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import hiredis
from redis import Redis as SyncRedis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

__all__ = ["MAYBE_TRANSIENT", "SENTINEL_SCHEME", "TRANSIENT_ERRORS", "SentinelUrl", "connect", "connect_sync",
           "is_transient", "redacted", "sentinel_url"]

SENTINEL_SCHEME = "redis+sentinel://"

# Errors that pass when Redis comes back: lost or refused connections, time-outs, a Redis still
# loading its data (BusyLoadingError is a ConnectionError), a read-only replica mid-failover.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError, RedisTimeoutError, ReadOnlyError, ConnectionError, TimeoutError,
)


# The classes `is_transient` may say yes to (for exception handlers keyed by class).
MAYBE_TRANSIENT: tuple[type[Exception], ...] = (*TRANSIENT_ERRORS, ResponseError)


def is_transient(exc: BaseException) -> bool:
    """True for an error that a retry after Redis comes back fixes (including a full Redis:
    `maxmemory` reached with `noeviction` refuses writes until memory is freed)."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(("OOM", "LOADING", "MASTERDOWN", "TRYAGAIN"))


class _HiredisPacking:
    """Packs commands with hiredis (C) instead of redis-py's Python packer: ~9x faster per
    command, which showed as the largest single cost of adding and finishing jobs."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str) and " " in args[0]:  # e.g. "SCRIPT LOAD": separate words
            args = (*args[0].split(), *args[1:])
        return [hiredis.pack_command(args)]


class _FastConnection(_HiredisPacking, Connection):
    pass


class _FastSSLConnection(_HiredisPacking, SSLConnection):
    pass


class _FastSentinelConnection(_HiredisPacking, SentinelManagedConnection):
    pass


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool (the primary looked up before each new connection), waiting for a free
    connection past `max_connections` as the plain pool does."""


@dataclass(frozen=True)
class SentinelUrl:
    """A `redis+sentinel://` URL's parts."""

    sentinels: tuple[tuple[str, int], ...]
    primary: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None  # the sentinels' own (`?sentinel_password=`; none by default)


def sentinel_url(url: str) -> SentinelUrl | None:
    """The parts of a `redis+sentinel://[user:password@]h1:p1,h2:p2/<primary>[/<db>][?sentinel_password=]`
    URL (the password is the primary's; the sentinels are asked without one unless
    `sentinel_password` gives theirs); None for any other URL. ValueError for a malformed one."""
    if not url.startswith(SENTINEL_SCHEME):
        return None
    rest, _, query = url[len(SENTINEL_SCHEME):].partition("?")
    spw = next((unquote(v) for k, _, v in (p.partition("=") for p in query.split("&")) if k == "sentinel_password"),
               None)
    auth, _, rest = rest.rpartition("@")
    hosts, _, path = rest.partition("/")
    username = password = None
    if auth:
        user, _, pw = auth.partition(":")
        username, password = unquote(user) or None, unquote(pw) or None
    sentinels = []
    for h in hosts.split(","):
        host, _, port = h.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"a sentinel is host:port, not {h!r} (in {redacted(url)})")
        sentinels.append((host.strip("[]"), int(port)))
    name, _, db = path.partition("/")
    if not name:
        raise ValueError(f"{redacted(url)}: name the primary the sentinels watch: redis+sentinel://host:port/<name>")
    return SentinelUrl(tuple(sentinels), name, int(db) if db.isdigit() else 0, username, password, spw or None)


def connect(url: str, *, blocking: bool = False, name: str | None = None, max_connections: int = 64) -> Redis:
    """An asyncio Redis client (str responses, as BullMQ needs); `blocking`: one connection, for
    BZPOPMIN waits (the consumer's, with its take queued behind: `QueueConsumer.take`).

    A command that meets a dropped connection (Redis restarted) is retried on a new one, up to
    three times within about a second; longer outages surface as `TRANSIENT_ERRORS`.

    Its pool holds at most `max_connections`; a request beyond that waits for a free one
    (up to 30 s) instead of failing, so a burst of clients cannot exhaust Redis or the pool.
    """
    kwargs: dict[str, object] = {
        "decode_responses": True,
        "health_check_interval": 30,
        "socket_keepalive": True,
        "retry": AsyncRetry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 3),
    }
    if name:
        kwargs["client_name"] = name
    size = 1 if blocking else max_connections
    sentinel = sentinel_url(url)
    if sentinel is not None:
        auth = {"username": sentinel.username, "password": sentinel.password, "db": sentinel.db}
        manager = Sentinel(sentinel.sentinels, sentinel_kwargs={"password": sentinel.sentinel_password,
                                                                "socket_timeout": 2.0, "socket_connect_timeout": 2.0})
        managed = _BlockingSentinelPool(sentinel.primary, manager, max_connections=size, timeout=30,
                                        connection_class=_FastSentinelConnection, is_master=True, **kwargs, **auth)
        return Redis(connection_pool=managed)
    fast = _FastSSLConnection if url.startswith("rediss://") else _FastConnection
    # `blocking`: one connection (its waits, and what is queued behind them, take turns on it; a
    # pipeline cannot use a single-connection client's own connection, so it is a pool of one).
    pool = BlockingConnectionPool.from_url(url, max_connections=size, timeout=30, connection_class=fast, **kwargs)
    return Redis(connection_pool=pool)


def connect_sync(url: str, *, name: str | None = None) -> SyncRedis:
    """A blocking Redis client, for code that runs in plain threads (GPU workers)."""
    kwargs: dict[str, object] = {"decode_responses": True, "health_check_interval": 30, "socket_keepalive": True,
                                 "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 3)}
    if name:
        kwargs["client_name"] = name
    sentinel = sentinel_url(url)
    if sentinel is not None:
        from redis.sentinel import Sentinel as SyncSentinel

        manager = SyncSentinel(sentinel.sentinels, sentinel_kwargs={"password": sentinel.sentinel_password,
                                                                    "socket_timeout": 2.0,
                                                                    "socket_connect_timeout": 2.0})
        client: SyncRedis = manager.master_for(sentinel.primary, redis_class=SyncRedis, username=sentinel.username,
                                               password=sentinel.password, db=sentinel.db,
                                               **kwargs)  # type: ignore[arg-type]  # (its stub types **kwargs narrowly)
        return client
    return SyncRedis.from_url(url, **kwargs)


def redacted(url: str) -> str:
    """A Redis URL without its password (for logs and the console)."""
    from urllib.parse import urlsplit, urlunsplit

    if url.startswith(SENTINEL_SCHEME):  # (several hosts: not a URL urlsplit reads)
        body, _, query = url[len(SENTINEL_SCHEME):].partition("?")
        auth, at, rest = body.rpartition("@")
        shown = f"{auth.partition(':')[0]}:***@{rest}" if at else rest
        return f"{SENTINEL_SCHEME}{shown}" + ("?sentinel_password=***" if "sentinel_password=" in query else "")
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username + ':' if parts.username else ':'}***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
