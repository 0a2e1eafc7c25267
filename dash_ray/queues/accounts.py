"""What the gateway keeps in Redis beside the jobs, per user: one-use WebSocket tickets, the bytes
of their uploads, their submission rate (a moving window per user, `Keys.rate`); and whether
Redis answers (the gateway's health)."""

from __future__ import annotations

import secrets
import time

from redis.asyncio import Redis

from dash_ray.errors import RateLimited
from dash_ray.queues.keys import Keys
from dash_ray.queues.lifecycle import Rate
from dash_ray.queues.lua import RATE

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
    """Counts a submission that is checked before its job is made (a retry, a submit with a
    webhook to look up), or raises RateLimited with a retry-after. A plain submit is counted by
    the script that makes its job (`Quota.rate`): one round trip for both.

    A refusal is remembered on this replica until its retry-after (`refused_lately`): a caller
    who keeps sending over their rate gets the 429 with no Redis work and no payload checks."""

    remembered = 10_000  # users refused lately, kept at most

    def __init__(self, redis: Redis, keys: Keys, rate: str) -> None:
        self.redis = redis
        self.keys = keys
        self.rate = Rate.parse(rate)
        self._script = redis.register_script(RATE.text())
        self._refused: dict[str, float] = {}  # user -> until when (monotonic) they are over

    async def check(self, user_id: str) -> None:
        """Count one submission (or retry) of `user_id`, or raise RateLimited."""
        self.refused_lately(user_id)
        keys, args = RATE.pack({"rate": self.keys.rate(user_id)},
                               {"rate_limit": self.rate.limit, "rate_window_ms": self.rate.window_ms,
                                "now_ms": int(time.time() * 1000)})
        wait_ms = int((await self._script(keys=keys, args=args))[0])
        if wait_ms:
            raise self.refused(user_id, wait_ms)

    def refused_lately(self, user_id: str) -> None:
        """Raise RateLimited if `user_id` was refused for their rate on this replica and the
        retry-after they were given has not passed."""
        until = self._refused.get(user_id)
        if until is None:
            return
        left = until - time.monotonic()
        if left <= 0:
            self._refused.pop(user_id, None)
            return
        raise self.rate.refused(int(left * 1000) + 1)

    def refused(self, user_id: str, wait_ms: int) -> RateLimited:
        """Remember that `user_id` is over their rate for `wait_ms`; the error to answer."""
        if len(self._refused) >= self.remembered:
            now = time.monotonic()
            self._refused = {u: t for u, t in self._refused.items() if t > now}
            if len(self._refused) >= self.remembered:
                self._refused.clear()
        self._refused[user_id] = time.monotonic() + wait_ms / 1000
        return self.rate.refused(wait_ms)
