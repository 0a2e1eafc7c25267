"""What the gateway keeps in Redis beside the jobs, per user: one-use WebSocket tickets, the bytes
of their uploads, their submission rate (the `limits` package's moving windows, under
`Keys.ratelimit_prefix`); and whether Redis answers (the gateway's health)."""

from __future__ import annotations

import math
import secrets
import time

from limits import parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio import Redis

from dash_ray.errors import RateLimited
from dash_ray.queues.keys import Keys

__all__ = ["Accounts", "SubmitLimiter"]


class Accounts:
    """Tickets, upload bytes and a health probe on one connection."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def ping(self) -> None:
        """Return when Redis answers (raises what the connection raises)."""
        await self.redis.ping()

    async def issue_ticket(self, user_id: str, admin: bool, ttl_s: int) -> str:
        """A new one-use ticket for `user_id` (and whether an admin), good for `ttl_s` (kept in
        Redis, so any replica redeems it)."""
        ticket = secrets.token_urlsafe(24)
        await self.redis.set(self.keys.ticket(ticket), f"{user_id}\x1f{int(admin)}", ex=ttl_s, nx=True)
        return ticket

    async def redeem_ticket(self, ticket: str) -> tuple[str, bool] | None:
        """(user id, admin) of a ticket, which is gone afterwards (GETDEL); None for an unknown or
        used one."""
        value = await self.redis.getdel(self.keys.ticket(ticket))
        if not value:
            return None
        user, _, admin = (value.decode() if isinstance(value, bytes) else str(value)).partition("\x1f")
        return user, admin == "1"

    async def upload_bytes(self, user_id: str) -> int:
        """The bytes of uploads `user_id` keeps."""
        return int(await self.redis.get(self.keys.upload_bytes(user_id)) or 0)

    async def take_upload(self, user_id: str, n: int, limit: int) -> bool:
        """Count `n` more bytes of `user_id`'s uploads, atomically, unless that goes over `limit`
        (then nothing is counted and False)."""
        key = self.keys.upload_bytes(user_id)
        if int(await self.redis.incrby(key, n)) > limit:
            await self.redis.decrby(key, n)
            return False
        return True

    async def give_upload(self, user_id: str, n: int) -> None:
        """Count `n` bytes of `user_id`'s uploads less (an upload that was not kept)."""
        await self.redis.decrby(self.keys.upload_bytes(user_id), n)


class SubmitLimiter:
    """Raises RateLimited (with a retry-after) before a submission that would go over a limit."""

    def __init__(self, redis_url: str, key_prefix: str, rate: str) -> None:
        self.storage = RedisStorage(f"async+{redis_url}", implementation="redispy", key_prefix=key_prefix)
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.rate = parse(rate.replace(" per ", "/"))

    async def check(self, user_id: str) -> None:
        """Count one submission (or retry) of `user_id`, or raise RateLimited."""
        if not await self.limiter.hit(self.rate, "submit", user_id):
            stats = await self.limiter.get_window_stats(self.rate, "submit", user_id)
            retry = max(1, math.ceil(stats.reset_time - time.time()))
            raise RateLimited(f"rate limit {self.rate} exceeded; retry in {retry}s", retry_after_s=retry)
