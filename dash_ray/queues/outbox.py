"""The webhook outbox: deliveries of job events, durable in Redis, claimed and settled atomically.

A job with a webhook has its wanted events put in the outbox by the very script that stores
and publishes each event (see `_EMIT` in `queues/lua.py`), so no event is published without
its delivery being recorded, whatever crashes. Senders (any number, on any gateway replica)
`claim` due deliveries under a lease: one that dies mid-send leaves its deliveries to be claimed
again when the lease ends. Delivery is thus at least once; each carries the event's `seq`.

`{jobId}:progress` and `{jobId}:preview` hold only the latest such event: a new one replaces
the body, and a send of an older body settles nothing (the newer one goes next).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from dash_ray.queues.keys import Keys
from dash_ray.queues.lua import Script

__all__ = ["Delivery", "WebhookOutbox"]

DEAD_MAX = 1000  # given-up deliveries kept for operators

_CLAIM = Script(
    "hook_claim", keys=("hooks", "bodies", "tries"), args=("now_ms", "lease_ms", "n"), body=r"""
local ids = redis.call('ZRANGEBYSCORE', K.hooks, '-inf', A.now_ms, 'LIMIT', 0, tonumber(A.n))
local out = {}
for _, id in ipairs(ids) do
  local body = redis.call('HGET', K.bodies, id)
  if body then
    redis.call('ZADD', K.hooks, tonumber(A.now_ms) + tonumber(A.lease_ms), id)
    out[#out + 1] = id
    out[#out + 1] = body
    out[#out + 1] = redis.call('HINCRBY', K.tries, id, 1)
  else
    redis.call('ZREM', K.hooks, id)
  end
end
return out
""")

# settle: the send of `body` ended. `due_ms` = '' : done (delivered, or given up with `dead`
# recorded); else try again at due_ms. When the body was replaced meanwhile (a newer latest
# progress), the newer one is due now, with its tries counted afresh. Returns 1 if settled as asked.
_SETTLE = Script(
    "hook_settle", keys=("hooks", "bodies", "tries", "dead"), args=("id", "body", "due_ms", "dead"), body=r"""
if redis.call('HGET', K.bodies, A.id) ~= A.body then
  if redis.call('HEXISTS', K.bodies, A.id) == 1 then
    redis.call('HDEL', K.tries, A.id)
    redis.call('ZADD', K.hooks, 0, A.id)
  end
  return 0
end
if A.due_ms ~= '' then
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
    """A claimed delivery: its outbox id, the event frame to send, the attempt it is (1-based)."""

    id: str
    body: str
    attempt: int

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
        """Up to `n` due deliveries, each leased for `lease_s` (then due again unless settled)."""
        now = int(time.time() * 1000)
        keys, args = _CLAIM.pack(self._keys, {"now_ms": now, "lease_ms": int(lease_s * 1000), "n": n})
        raw = await self._claim(keys=keys, args=args)
        out = []
        for i in range(0, len(raw), 3):
            rid, body = (x.decode() if isinstance(x, bytes) else str(x) for x in raw[i:i + 2])
            out.append(Delivery(rid, body, int(raw[i + 2])))
        return out

    async def _settle_as(self, d: Delivery, due_ms: str, dead: str) -> bool:
        keys, args = _SETTLE.pack(self._keys, {"id": d.id, "body": d.body, "due_ms": due_ms, "dead": dead})
        return bool(await self._settle(keys=keys, args=args))

    async def delivered(self, d: Delivery) -> bool:
        """It was answered 2xx: gone from the outbox (unless a newer latest event replaced it)."""
        return await self._settle_as(d, "", "")

    async def retry(self, d: Delivery, after_s: float) -> bool:
        """Try it again in `after_s` seconds."""
        return await self._settle_as(d, str(int((time.time() + after_s) * 1000)), "")

    async def give_up(self, d: Delivery, url: str, why: str) -> bool:
        """Drop it, recorded in the dead list (newest first) with why."""
        dead = json.dumps({"id": d.message_id, "url": url, "tries": d.attempt, "why": why, "ts": round(time.time(), 3)})
        return await self._settle_as(d, "", dead)

    async def pending(self) -> int:
        """Deliveries in the outbox (due, leased or waiting to be retried)."""
        return int(await self.redis.zcard(self.keys.hooks))

    async def dead(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest given-up deliveries."""
        return [json.loads(x) for x in await self.redis.lrange(self.keys.hook_dead, 0, limit - 1)]
