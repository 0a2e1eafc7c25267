"""Redis connections: one place that builds clients from a URL."""

from __future__ import annotations

from redis import Redis as SyncRedis
from redis.asyncio import BlockingConnectionPool, Redis

__all__ = ["connect", "connect_sync"]


def connect(url: str, *, blocking: bool = False, name: str | None = None, max_connections: int = 64) -> Redis:
    """An asyncio Redis client (str responses, as BullMQ needs); `blocking` for BZPOPMIN waits.

    Its pool holds at most `max_connections`; a request beyond that waits for a free one
    (up to 30 s) instead of failing, so a burst of clients cannot exhaust Redis or the pool.
    """
    kwargs: dict[str, object] = {
        "decode_responses": True,
        "health_check_interval": 30,
        "socket_keepalive": True,
    }
    if name:
        kwargs["client_name"] = name
    if blocking:
        return Redis.from_url(url, single_connection_client=True, **kwargs)  # type: ignore[arg-type]
    pool = BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=30, **kwargs)
    return Redis(connection_pool=pool)


def connect_sync(url: str, *, name: str | None = None) -> SyncRedis:
    """A blocking Redis client, for code that runs in plain threads (GPU workers)."""
    kwargs: dict[str, object] = {"decode_responses": True, "health_check_interval": 30, "socket_keepalive": True}
    if name:
        kwargs["client_name"] = name
    return SyncRedis.from_url(url, **kwargs)  # type: ignore[arg-type]
