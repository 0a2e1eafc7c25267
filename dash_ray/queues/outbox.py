"""The webhook outbox: deliveries of job events, durable in Redis, claimed and settled atomically.

A job with a webhook has its wanted events put in the outbox by the very script that stores
and publishes each event (see `_EMIT` in `queues/lua.py`), so no event is published without
its delivery being recorded, whatever crashes. Senders (any number, on any gateway replica)
`claim` due deliveries under a lease: one that dies mid-send leaves its deliveries to be claimed
again when the lease ends. Delivery is thus at least once; each carries the event's `seq`.

A claim is fenced: it takes a fresh token, kept with the delivery's tries (`{tries}:{token}`),
and only the claim holding the delivery's current token can settle it. So a sender whose lease
ran out while it still sent (and whose delivery another sender has claimed since) settles
nothing when it ends: its late "delivered" deletes nothing, its "retry" reschedules nothing.
A settle ends the claim (its token is dropped), so a claim settles once.

`{jobId}:progress` and `{jobId}:preview` hold only the latest such event: a new one replaces
the body, and a send of an older body settles nothing (the newer one goes next).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from dash_ray.queues.keys import Keys
from dash_ray.queues.lua import Script

__all__ = ["Delivery", "WebhookOutbox"]

DEAD_MAX = 1000  # given-up deliveries kept for operators

# A delivery's entry in K.tries: `{tries}` (settled, or from before claims were fenced) or
# `{tries}:{token}` (claimed under that token).
_CLAIM = Script(
    "hook_claim", keys=("hooks", "bodies", "tries"), args=("now_ms", "lease_ms", "n", "token"), body=r"""
local ids = redis.call('ZRANGEBYSCORE', K.hooks, '-inf', A.now_ms, 'LIMIT', 0, tonumber(A.n))
local out = {}
for _, id in ipairs(ids) do
  local body = redis.call('HGET', K.bodies, id)
  if body then
    local tries = (tonumber(string.match(redis.call('HGET', K.tries, id) or '', '^%d+')) or 0) + 1
    redis.call('ZADD', K.hooks, tonumber(A.now_ms) + tonumber(A.lease_ms), id)
    redis.call('HSET', K.tries, id, tries .. ':' .. A.token)
    out[#out + 1] = id
    out[#out + 1] = body
    out[#out + 1] = tries
  else
    redis.call('ZREM', K.hooks, id)
  end
end
return out
""")

# settle: the send of `body` under the claim `token` ended. Nothing happens unless that claim
# still holds the delivery (returns -1). `due_ms` = '' : done (delivered, or given up with `dead`
# recorded); else try again at due_ms (`uncount` = '1': the claim is given back unsent, its try
# not counted). When the body was replaced meanwhile (a newer latest progress), the newer one is
# due now, with its tries counted afresh (returns 0). Returns 1 if settled as asked.
_SETTLE = Script(
    "hook_settle", keys=("hooks", "bodies", "tries", "dead"), args=("id", "token", "body", "due_ms", "dead", "uncount"),
    body=r"""
local held = redis.call('HGET', K.tries, A.id)
local tries, token = string.match(held or '', '^(%d+):(.*)$')
if token ~= A.token then
  return -1
end
if redis.call('HGET', K.bodies, A.id) ~= A.body then
  if redis.call('HEXISTS', K.bodies, A.id) == 1 then
    redis.call('HDEL', K.tries, A.id)
    redis.call('ZADD', K.hooks, 0, A.id)
  end
  return 0
end
if A.due_ms ~= '' then
  tries = tonumber(tries)
  if A.uncount == '1' then tries = tries - 1 end
  if tries > 0 then redis.call('HSET', K.tries, A.id, tries) else redis.call('HDEL', K.tries, A.id) end
  redis.call('ZADD', K.hooks, 'XX', tonumber(A.due_ms), A.id)
  return 1
end
redis.call('HDEL', K.bodies, A.id)
redis.call('HDEL', K.tries, A.id)
redis.call('ZREM', K.hooks, A.id)
if A.dead ~= '' then
  redis.call('LPUSH', K.dead, A.dead)
  redis.call('LTRIM', K.dead, 0, DEAD_MAX - 1)
end
return 1
""")


@dataclass(frozen=True)
class Delivery:
    """A claimed delivery: its outbox id, the event frame to send, the attempt it is (1-based),
    and the claim's token (which alone may settle it)."""

    id: str
    body: str
    attempt: int
    token: str = ""

    @property
    def job_id(self) -> str:
        """The job whose event this is."""
        return self.id.rsplit(":", 1)[0]

    @property
    def event(self) -> dict[str, Any]:
        """The event frame, parsed."""
        out = json.loads(self.body)
        return out if isinstance(out, dict) else {}

    @property
    def message_id(self) -> str:
        """The delivery's id for receivers (`webhook-id`): the job and the event's seq, the same
        on every retry of it."""
        return f"{self.job_id}:{self.event.get('seq', 0)}"


class WebhookOutbox:
    """Claim and settle webhook deliveries on one key prefix."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        k = keys
        self._keys = {"hooks": k.hooks, "bodies": k.hook_bodies, "tries": k.hook_tries, "dead": k.hook_dead}
        self._claim = redis.register_script(_CLAIM.text())
        self._settle = redis.register_script(_SETTLE.text(dead_max=DEAD_MAX))

    async def claim(self, n: int, lease_s: float) -> list[Delivery]:
        """Up to `n` due deliveries, each leased for `lease_s` (then due again unless settled) under
        a fresh token: claimed by no one else meanwhile, and settled by this claim only."""
        now = int(time.time() * 1000)
        token = secrets.token_hex(8)
        keys, args = _CLAIM.pack(self._keys, {"now_ms": now, "lease_ms": max(1, int(lease_s * 1000)), "n": n,
                                              "token": token})
        raw = await self._claim(keys=keys, args=args)
        out = []
        for i in range(0, len(raw), 3):
            rid, body = (x.decode() if isinstance(x, bytes) else str(x) for x in raw[i:i + 2])
            out.append(Delivery(rid, body, int(raw[i + 2]), token))
        return out

    async def _settle_as(self, d: Delivery, due_ms: str, dead: str, uncount: bool = False) -> bool:
        keys, args = _SETTLE.pack(self._keys, {"id": d.id, "token": d.token, "body": d.body, "due_ms": due_ms,
                                               "dead": dead, "uncount": "1" if uncount else ""})
        return int(await self._settle(keys=keys, args=args)) == 1

    async def delivered(self, d: Delivery) -> bool:
        """It was answered 2xx: gone from the outbox (unless a newer latest event replaced it).
        False when not settled so: replaced, or (a lease that ran out) claimed by another since."""
        return await self._settle_as(d, "", "")

    async def retry(self, d: Delivery, after_s: float) -> bool:
        """Try it again in `after_s` seconds (False as `delivered`)."""
        return await self._settle_as(d, str(int((time.time() + after_s) * 1000)), "")

    async def release(self, d: Delivery, after_s: float) -> bool:
        """Give it back unsent, due in `after_s` seconds, this try not counted (False as `delivered`)."""
        return await self._settle_as(d, str(int((time.time() + after_s) * 1000)), "", uncount=True)

    async def give_up(self, d: Delivery, url: str, why: str) -> bool:
        """Drop it, recorded in the dead list (newest first) with why (False as `delivered`)."""
        dead = json.dumps({"id": d.message_id, "url": url, "tries": d.attempt, "why": why, "ts": round(time.time(), 3)})
        return await self._settle_as(d, "", dead)

    async def pending(self) -> int:
        """Deliveries in the outbox (due, leased or waiting to be retried)."""
        return int(await self.redis.zcard(self.keys.hooks))

    async def dead(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest given-up deliveries."""
        return [json.loads(x) for x in await self.redis.lrange(self.keys.hook_dead, 0, limit - 1)]
