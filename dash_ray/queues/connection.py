"""Redis connections: one place that builds clients from a URL."""

from __future__ import annotations

from typing import Any

import hiredis
from redis import Redis as SyncRedis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

__all__ = ["MAYBE_TRANSIENT", "TRANSIENT_ERRORS", "connect", "connect_sync", "is_transient", "redacted"]

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
    fast = _FastSSLConnection if url.startswith("rediss://") else _FastConnection
    # `blocking`: one connection (its waits, and what is queued behind them, take turns on it; a
    # pipeline cannot use a single-connection client's own connection, so it is a pool of one).
    pool = BlockingConnectionPool.from_url(url, max_connections=1 if blocking else max_connections, timeout=30,
                                           connection_class=fast, **kwargs)
    return Redis(connection_pool=pool)


def connect_sync(url: str, *, name: str | None = None) -> SyncRedis:
    """A blocking Redis client, for code that runs in plain threads (GPU workers)."""
    kwargs: dict[str, object] = {"decode_responses": True, "health_check_interval": 30, "socket_keepalive": True,
                                 "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 3)}
    if name:
        kwargs["client_name"] = name
    return SyncRedis.from_url(url, **kwargs)


def redacted(url: str) -> str:
    """A Redis URL without its password (for logs and the console)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username + ':' if parts.username else ':'}***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
