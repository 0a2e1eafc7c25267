"""Honest ETAs: measured seconds per unit of each job shape, and a queue's workers, turned into
when a waiting job will start and finish (the jobs ahead of it played onto the workers); a
running job's time left from its progress (`left_from_progress`, the one such rule: the view,
the worker's progress events and the plan all use it); which jobs are ahead of a waiting one
(`jobs_ahead`, BullMQ's hand-out order)."""

from __future__ import annotations

import heapq
import json
import time
from typing import Any

from dash_ray.models.cost import cost_family, cost_shape
from dash_ray.queues.batch import Batch
from dash_ray.queues.keys import Keys

__all__ = ["MAX_AHEAD", "MIN_PROGRESS", "CostBook", "estimate", "jobs_ahead", "left_from_progress", "plan_start"]

MAX_AHEAD = 500  # jobs ahead read one by one; the rest are counted at their mean
# Percent of progress from which a running job's pace tells its time left: before it, the time
# is mostly start-up (a model load, the first step's compilation) and the pace would overshoot.
MIN_PROGRESS = 5.0
_ALPHA = 0.3  # weight of a new measurement in the moving average


FAMILY = "~"  # a family's key in the costs: `~<family>`, seconds per unit x scale


class CostBook:
    """A consumer's moving averages of seconds per unit, by job shape; by family (`~<family>`,
    per unit x scale: see `models.cost.FamilyRule`); and the queue's (`*`)."""

    def __init__(self) -> None:
        self.per_unit: dict[str, float] = {}
        self.dirty = False

    def measured(self, queue: str, data: dict[str, Any], seconds: float) -> None:
        """Fold one job's run time into its shape's average and the queue's."""
        shape, units = cost_shape(queue, data)
        x = seconds / units
        rates = [(shape, x), ("*", x)]
        family = cost_family(queue, data)
        if family is not None:
            rates.append((FAMILY + family[0], x / family[1]))
        for key, rate in rates:
            old = self.per_unit.get(key)
            self.per_unit[key] = rate if old is None else (1 - _ALPHA) * old + _ALPHA * rate
        self.dirty = True


def job_seconds(queue: str, data: dict[str, Any], costs: dict[str, float]) -> float | None:
    """A job's expected run time from the measured costs: its shape's; for a shape never run,
    its family's scaled to it (a model's generations per step and megapixel); else the queue's
    per unit (None before any measurement)."""
    shape, units = cost_shape(queue, data)
    per_unit = costs.get(shape)
    if per_unit is None:
        family = cost_family(queue, data)
        rate = costs.get(FAMILY + family[0]) if family is not None else None
        per_unit = rate * family[1] if rate is not None and family is not None else costs.get("*")
    return None if per_unit is None else per_unit * units


def left_from_progress(elapsed_s: float, progress: float) -> float | None:
    """Seconds a running job has left at its pace so far (`elapsed_s` since it started, at
    `progress` percent); None below MIN_PROGRESS or once at 100 (nothing to extrapolate)."""
    if not MIN_PROGRESS <= progress < 100:
        return None
    return max(0.0, elapsed_s) * (100 - progress) / progress


def jobs_ahead(wait_len: int, rank: int | None, position: int,
               most: int = MAX_AHEAD) -> tuple[tuple[int, int] | None, int]:
    """Where the jobs ahead of a waiting job are, at most `most` of each: the LRANGE (start, stop)
    of `wait` to read (None: none) and how many to read from the start of `prioritized`.

    BullMQ hands out the tail of `wait` first, then `prioritized` by rank; a job's `position`
    (1 = next) counts the same way (`queue_position`, queues/lua/includes/queue_position.lua, the
    one place that counts it: atomically, beside the writes): a job in `prioritized` (`rank` not
    None) has all of `wait` and the `rank` before it ahead; one in `wait` the position - 1 after it."""
    if rank is not None:
        return (-most, -1) if wait_len else None, min(rank, most)
    idx = wait_len - position  # the job's index in `wait`; the ones after it go first
    stop = min(idx + most, wait_len - 1)
    return ((idx + 1, stop) if stop >= idx + 1 else None), 0


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
    in_wait, in_prioritized = jobs_ahead(int(wait_len), None if rank is None else int(rank), position)
    b = Batch(redis)
    if in_wait is not None:
        b.add("lrange", keys.bull(queue, "wait"), *in_wait)
    if in_prioritized:
        b.add("zrange", keys.bull(queue, "prioritized"), 0, in_prioritized - 1)
    ahead_ids = [jid for part in (await b.execute() if in_wait or in_prioritized else []) for jid in (part or [])]
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
        left = left_from_progress(elapsed, float(progress or 0))
        remaining.append(max(0.0, est - elapsed if left is None else left))
    slots = max(1, int((cap or {}).get("slots") or 0), len(active))
    start = plan_start(remaining, ahead, slots)
    return round(start, 2), round(start + own, 2)


def _json(raw: Any) -> dict[str, Any]:
    try:
        out = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}
