"""GPU shares: the GPU a user's running jobs may hold at once, and a group's members' together
(a budget's `gpuShare`, in GPUs; DASH_GPU_SHARE_PER_USER / DASH_ORG_GPU_SHARE by default).

Enforced as jobs are taken, where the queue's consumer admits what it took (`admit`, hold.lua):
a job that fits is counted (`Keys.gpu_held`, `Keys.gpu_holding`, in milli-GPUs: the GPU share
its queue's workers hold); one that does not, while its owner (or group) holds some already,
goes back to wait, out of BullMQ's ready sets (parked in `waiting-children`, named in
`Keys.parked`), so the consumer takes the next job, another user's, instead of taking the
same one again and again. When an attempt ends its share is given back (`release`, unhold.lua)
and the oldest jobs parked for it go back to the front of their priority, to be taken again.
A count left by a consumer that died (its jobs' locks are gone) is given back by any consumer
of the queue (`settle`, every few seconds).

A cap below one job's share lets one such job run at a time: a job is parked only while its
owner holds some share already. Counting starts when a cap is first set anywhere (nothing is
counted, and nothing costs a round trip, while no one has one): jobs already running then are
not counted. The share counted is the queue's configured one (`gpu_fraction`), not a resized
worker's.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from dash_ray.queues.batch import Batch, register
from dash_ray.queues.keys import Keys
from dash_ray.queues.ledger import Budgets
from dash_ray.queues.lua import HOLD, UNHOLD

if TYPE_CHECKING:
    from dash_ray.queues.active import ActiveJob
    from dash_ray.queues.lifecycle import Lifecycle

__all__ = ["GpuShares"]

log = logging.getLogger(__name__)

UNPARK = 2  # parked jobs put back per user or group as a job of theirs ends: one to refill its place, one more (the cap may have grown)
SETTLE_S = 5.0  # how often counts left by dead consumers are looked for


def _milli(gpus: float | None) -> str:
    return "" if gpus is None else str(round(gpus * 1000))


class GpuShares:
    """One queue's side of the GPU shares: admit what its consumer took, release what ended."""

    def __init__(self, redis: Redis, keys: Keys, queue: str, job_prefix: str, gpu_fraction: float,
                 budgets: Budgets, lifecycle: Lifecycle) -> None:
        self.redis = redis
        self.keys = keys
        self.queue = queue
        self.job_prefix = job_prefix  # `<prefix>:<queue>:`
        self.share = round(gpu_fraction * 1000)  # milli-GPUs one job of this queue holds
        self.budgets = budgets
        self.lifecycle = lifecycle
        self._hold = redis.register_script(HOLD.text(ns=keys.ns))
        self._unhold = redis.register_script(UNHOLD.text(ns=keys.ns))
        register(self._hold, self._unhold)
        self.counted: dict[str, str] = {}  # job -> the token of the attempt this consumer counted
        self._settled = 0.0

    async def admit(self, jobs: list[ActiveJob]) -> list[ActiveJob]:
        """The taken jobs that may run now; the others were parked (they wait for their owner's
        share, their `waiting` event says so). No cap anywhere (or a queue holding no GPU): all,
        at no cost. If the count cannot be made (Redis unreachable, or its answer lost), the jobs
        whose locks are still theirs run, uncounted: a job parked by a script whose answer was
        lost has no lock any more."""
        owned = [j for j in jobs if j.user_id]
        if not owned or self.share <= 0 or not await self.budgets.shares():
            return jobs
        d, o = self.budgets.default, self.budgets.org_default
        keys, args = HOLD.pack(
            {"held": self.keys.gpu_held(self.queue), "holding": self.keys.gpu_holding, "budgets": self.keys.budgets,
             "parkers": self.keys.parkers, "active": self.job_prefix + "active",
             "stalled": self.job_prefix + "stalled", "waiting_children": self.job_prefix + "waiting-children"},
            {"share": self.share, "user_cap": _milli(d.share), "org_cap": _milli(o.share),
             "now_ms": int(time.time() * 1000), "job_prefix": self.job_prefix})
        for j in owned:
            args += [j.id, j.token, j.user_id or "", j.org or ""]
        try:
            reply = await self._hold(keys=keys, args=args)
        except Exception:
            log.warning("%s: could not count the GPU shares of %d taken job(s)", self.queue, len(owned), exc_info=True)
            return await self._still_ours(jobs)
        parked = {str(reply[i]): str(reply[i + 1]) for i in range(0, len(reply), 2)}
        admitted = []
        for j in jobs:
            if j.id not in parked:
                admitted.append(j)
                if j.user_id:
                    self.counted[j.id] = j.token
                continue
            who = parked[j.id]
            whose = f"your group {who[4:]}'s" if who.startswith("org:") else "your"
            try:
                await self.lifecycle.wait_again(j.id, self.queue, j.user_id,
                                                f"waiting: {whose} GPU share is in use (a job of yours ends first)")
            except Exception:
                log.warning("job %s: parked, but its waiting event was not written", j.id, exc_info=True)
        return admitted

    async def _still_ours(self, jobs: list[ActiveJob]) -> list[ActiveJob]:
        try:
            locks = await self.redis.mget([f"{self.job_prefix}{j.id}:lock" for j in jobs])
        except Exception:
            return jobs  # nothing can be known now: they run (their completion checks their locks)
        return [j for j, lock in zip(jobs, locks, strict=True) if lock == j.token]

    async def release(self, jobs: list[ActiveJob], batch: Batch | None = None) -> bool:
        """These jobs' attempts ended (or they went back unstarted): the share each attempt holds
        is given back (an attempt whose job was taken again since, under another token, gives
        back nothing), and jobs parked for it go back to be taken; on `batch` if given (True: a
        reply was queued there, to drop). Only attempts this consumer counted cost anything."""
        mine = [j for j in jobs if self.counted.get(j.id) == j.token]
        if not mine:
            return False
        for j in mine:
            del self.counted[j.id]
        pairs: list[Any] = []
        for j in mine:
            pairs += [j.id, j.token]
        keys, args = self._unhold_call("", pairs)
        await self._unhold(keys=keys, args=args, client=batch)  # type: ignore[arg-type]  # (a Batch stands in)
        return batch is not None

    async def settle(self) -> None:
        """Every SETTLE_S: give back what jobs of this queue whose lock is gone (and that are not
        running: not in `active`) still hold, their consumer dead or they put back; and put back
        the parked jobs of anyone who holds nothing now."""
        now = time.monotonic()
        if now - self._settled < SETTLE_S:
            return
        self._settled = now
        keys, args = self._unhold_call("1", [])
        n, back = await self._unhold(keys=keys, args=args)
        if int(n) or int(back):
            log.info("%s: gave back the GPU share of %s job(s) whose lock was gone; %s parked job(s) back",
                     self.queue, n, back)

    def _unhold_call(self, unlocked: str, pairs: list[Any]) -> tuple[list[str], list[Any]]:
        keys, args = UNHOLD.pack({"held": self.keys.gpu_held(self.queue), "holding": self.keys.gpu_holding,
                                  "parkers": self.keys.parkers, "active": self.job_prefix + "active"},
                                 {"job_prefix": self.job_prefix, "unlocked": unlocked, "most": UNPARK})
        return keys, args + pairs
