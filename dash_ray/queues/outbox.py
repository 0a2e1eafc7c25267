"""The webhook outbox: deliveries of job events, durable in Redis, claimed and settled atomically.

A job with a webhook has its wanted events put in the outbox by the very script that stores
and publishes each event (see `queues/lua/includes/emit.lua`), so no event is published without
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
from functools import cached_property
from typing import Any

from redis.asyncio import Redis

from dash_ray.models.events import Frame
from dash_ray.queues.keys import Keys
from dash_ray.queues.lua import HOOK_CLAIM as _CLAIM
from dash_ray.queues.lua import HOOK_REPLAY as _REPLAY
from dash_ray.queues.lua import HOOK_SETTLE as _SETTLE

__all__ = ["Delivery", "WebhookOutbox"]

DEAD_MAX = 1000  # given-up deliveries kept for operators

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

    @cached_property
    def frame(self) -> Frame:
        """The event frame."""
        return Frame(self.body)

    @property
    def message_id(self) -> str:
        """The delivery's id for receivers (`webhook-id`): the job and the event's seq, the same
        on every retry of it."""
        return f"{self.job_id}:{self.frame.seq}"


class WebhookOutbox:
    """Claim and settle webhook deliveries on one key prefix."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        k = keys
        self._keys = {"hooks": k.hooks, "bodies": k.hook_bodies, "tries": k.hook_tries, "dead": k.hook_dead}
        self._claim = redis.register_script(_CLAIM.text())
        self._settle = redis.register_script(_SETTLE.text(dead_max=DEAD_MAX))
        self._replay = redis.register_script(_REPLAY.text())

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

    async def give_up(self, d: Delivery, url: str, why: str, final: bool = False) -> bool:
        """Drop it, recorded in the dead list (newest first) with why (False as `delivered`);
        `final`: the receiver refused it for good (410, a URL that cannot be sent to), so a
        replay of the newest leaves it unless named."""
        dead = json.dumps({"id": d.message_id, "url": url, "tries": d.attempt, "why": why, "ts": round(time.time(), 3),
                           "final": final, "delivery": d.id, "body": d.body})  # (what a replay sends again)
        return await self._settle_as(d, "", dead)

    async def destination(self, job_id: str) -> tuple[str, str]:
        """Where a job's webhooks go and whose job it is now: its record's (`hookUrl`, owner),
        '' for what it has not (the record is gone: nothing to send)."""
        url, owner = await self.redis.hmget(self.keys.job(job_id), "hookUrl", "userId")
        return _text(url), _text(owner)

    async def pending(self) -> int:
        """Deliveries in the outbox (due, leased or waiting to be retried)."""
        return int(await self.redis.zcard(self.keys.hooks))

    async def dead(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest given-up deliveries (id, url, tries, why, ts; without the event they carry)."""
        out = []
        for x in await self.redis.lrange(self.keys.hook_dead, 0, limit - 1):
            record = json.loads(x)
            record.pop("body", None)
            record.pop("delivery", None)
            out.append(record)
        return out

    async def replay(self, ids: list[str] | None = None, limit: int = DEAD_MAX) -> list[dict[str, Any]]:
        """Put given-up deliveries back in the outbox, due now with fresh tries: those of the dead
        list whose `id` (`<jobId>:<seq>`) is in `ids` (None: the newest `limit` not refused for
        good by their receiver, `final`), at most `limit` either way; returns their
        records (as `dead` gives them). Each is taken out of the dead list as it is replayed, in
        one script: a record two admins replay at once is replayed once. A record from before
        replays were possible (no event kept with it) is left in the list. Sent again, a
        delivery goes to the job's webhook URL as it is then, checked again as every send is."""
        wanted = None if ids is None else set(ids)
        chosen: list[tuple[str, dict[str, Any]]] = []
        for raw in await self.redis.lrange(self.keys.hook_dead, 0, DEAD_MAX - 1):
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            record = json.loads(text)
            if not record.get("delivery") or not isinstance(record.get("body"), str):
                continue
            if wanted is not None and record.get("id") not in wanted:
                continue
            if wanted is None and record.get("final"):
                continue
            chosen.append((text, record))
            if len(chosen) >= limit:
                break
        if not chosen:
            return []
        keys, args = _REPLAY.pack(self._keys, {"now_ms": int(time.time() * 1000)})
        for text, record in chosen:
            args += [text, record["delivery"], record["body"]]
        done = await self._replay(keys=keys, args=args)
        out = []
        for i in done:
            record = dict(chosen[int(i) - 1][1])
            record.pop("body", None)
            record.pop("delivery", None)
            out.append(record)
        return out


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else "" if x is None else str(x)
