"""Honest ETAs: measured seconds per unit of each job shape, and a queue's workers, turned into
when a waiting job will start and finish (the jobs ahead of it played onto the workers)."""

from __future__ import annotations

import heapq
import json
import time
from typing import Any

from dash_ray.models.cost import cost_shape
from dash_ray.queues.batch import Batch
from dash_ray.queues.keys import Keys

__all__ = ["MAX_AHEAD", "CostBook", "estimate", "plan_start"]

MAX_AHEAD = 500  # jobs ahead read one by one; the rest are counted at their mean
_ALPHA = 0.3  # weight of a new measurement in the moving average


class CostBook:
    """A consumer's moving averages of seconds per unit, by job shape (`*`: the queue's)."""

    def __init__(self) -> None:
        self.per_unit: dict[str, float] = {}
        self.dirty = False

    def measured(self, queue: str, data: dict[str, Any], seconds: float) -> None:
        """Fold one job's run time into its shape's average and the queue's."""
        shape, units = cost_shape(queue, data)
        x = seconds / units
        for key in (shape, "*"):
            old = self.per_unit.get(key)
            self.per_unit[key] = x if old is None else (1 - _ALPHA) * old + _ALPHA * x
        self.dirty = True


def job_seconds(queue: str, data: dict[str, Any], costs: dict[str, float]) -> float | None:
    """A job's expected run time from the measured costs (None before any measurement)."""
    shape, units = cost_shape(queue, data)
    per_unit = costs.get(shape, costs.get("*"))
    return None if per_unit is None else per_unit * units


def plan_start(remaining: list[float], ahead: list[float], slots: int) -> float:
    """When the next job starts: each slot is free once its running job ends (`remaining`),
    then the jobs `ahead` take the earliest free slot, in order."""
    free = sorted(remaining)[:slots] + [0.0] * max(0, slots - len(remaining))
    heapq.heapify(free)
    for seconds in ahead:
        heapq.heappush(free, heapq.heappop(free) + seconds)
    return free[0] if free else 0.0


async def estimate(redis: Any, keys: Keys, queue: str, job_id: str, data: dict[str, Any],
                   position: int) -> tuple[float, float] | None:
    """(seconds until the waiting job starts, until it finishes), or None before anything of the
    queue was measured. Reads the jobs ahead (the first MAX_AHEAD), the running ones and the
    queue's workers in two round trips."""
    b = Batch(redis)
    b.add("hgetall", keys.costs(queue)).add("hgetall", keys.capacity(queue))
    b.add("llen", keys.bull(queue, "wait")).add("lrange", keys.bull(queue, "active"), 0, 199)
    b.add("zrank", keys.bull(queue, "prioritized"), job_id)
    raw_costs, cap, wait_len, active, rank = await b.execute()
    costs = {k: float(v) for k, v in (raw_costs or {}).items()}
    own = job_seconds(queue, data, costs)
    if own is None:
        return None
    # BullMQ takes from the tail of `wait` first, then the prioritized set in order; `position`
    # counts the same way (POSITION), so the jobs ahead are position - 1 of those.
    wait_len = int(wait_len)
    b = Batch(redis)
    if rank is not None:
        b.add("lrange", keys.bull(queue, "wait"), -MAX_AHEAD, -1)
        if int(rank) > 0:
            b.add("zrange", keys.bull(queue, "prioritized"), 0, min(int(rank), MAX_AHEAD) - 1)
    else:
        idx = wait_len - position  # our index in `wait`; the ones after it go first
        b.add("lrange", keys.bull(queue, "wait"), idx + 1, min(idx + MAX_AHEAD, wait_len - 1))
    ahead_ids = [jid for part in await b.execute() for jid in (part or [])]
    shown = [jid for jid in ahead_ids if jid != job_id][:MAX_AHEAD]
    b = Batch(redis)
    for jid in shown:
        b.add("hget", keys.bull(queue, jid), "data")
    for jid in active:
        b.add("hget", keys.bull(queue, jid), "data").add("hmget", keys.job(jid), "started", "progress")
    replies = await b.execute() if shown or active else []
    mean = costs.get("*", 0.0)
    ahead = [job_seconds(queue, _json(d), costs) or mean for d in replies[:len(shown)]]
    ahead += [sum(ahead) / len(ahead) if ahead else own] * max(0, position - 1 - len(shown))
    now = time.time()
    remaining = []
    rest = replies[len(shown):]
    for i in range(0, len(rest), 2):
        est = job_seconds(queue, _json(rest[i]), costs) or mean
        started, progress = (rest[i + 1] or [None, None])[:2]
        elapsed = now - float(started) if started else 0.0
        p = float(progress or 0)
        left = elapsed * (100 - p) / p if 5 <= p < 100 else est - elapsed
        remaining.append(max(0.0, left))
    slots = max(1, int((cap or {}).get("slots") or 0), len(active))
    start = plan_start(remaining, ahead, slots)
    return round(start, 2), round(start + own, 2)


def _json(raw: Any) -> dict[str, Any]:
    try:
        out = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}
