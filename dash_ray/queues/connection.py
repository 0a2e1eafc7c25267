"""Redis connections: one place that builds clients from a URL."""

from __future__ import annotations

from redis import Redis as SyncRedis
from redis.asyncio import Redis

__all__ = ["connect", "connect_sync"]


def connect(url: str, *, blocking: bool = False, name: str | None = None) -> Redis:
    """An asyncio Redis client (str responses, as BullMQ needs); `blocking` for BZPOPMIN waits."""
    kwargs: dict[str, object] = {
        "decode_responses": True,
        "health_check_interval": 30,
        "socket_keepalive": True,
    }
    if name:
        kwargs["client_name"] = name
    if blocking:
        kwargs["single_connection_client"] = True
    return Redis.from_url(url, **kwargs)  # type: ignore[arg-type]


def connect_sync(url: str, *, name: str | None = None) -> SyncRedis:
    """A blocking Redis client, for code that runs in plain threads (GPU workers)."""
    kwargs: dict[str, object] = {"decode_responses": True, "health_check_interval": 30, "socket_keepalive": True}
    if name:
        kwargs["client_name"] = name
    return SyncRedis.from_url(url, **kwargs)  # type: ignore[arg-type]
