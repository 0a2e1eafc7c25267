"""Redis connections: one place that builds clients from a URL."""

from __future__ import annotations

from redis.asyncio import Redis

__all__ = ["connect"]


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
