"""CapacityBoard: what a queue's consumer tells the others and the gateway of itself, and reads
of theirs: its workers now and whether it is starved (`Keys.capacity`), its measured costs (for
ETAs) and memory peaks (for GPU sizing), and the GPU arbitration flags of its running jobs
(asked to yield, and how often)."""

from __future__ import annotations

import time
from collections.abc import Iterable

from redis.asyncio import Redis

from dash_ray.queues.eta import CostBook
from dash_ray.queues.keys import Keys

__all__ = ["CapacityBoard"]


class CapacityBoard:
    """One queue's capacity hash and its jobs' yield flags; the other queues' hashes."""

    def __init__(self, redis: Redis, queue: str, keys: Keys) -> None:
        self.redis = redis
        self.name = queue
        self.keys = keys

    async def report_capacity(self, costs: CostBook, slots: int, busy: int, pending: int = 0,
                              starved_since: float = 0.0, *, gpu_fraction: float | None = None,
                              memory: dict[str, tuple[str, int]] | None = None) -> None:
        """Write this queue's workers now (and since when it has been starved: workers pending
        while jobs wait; 0 if it is not) and, if changed, its measured costs, for ETAs and GPU
        arbitration."""
        pipe = self.redis.pipeline(transaction=False)
        cap = self.keys.capacity(self.name)
        pipe.hset(cap, mapping={"slots": slots, "busy": busy, "pending": pending,
                                "starved": round(starved_since, 3), "ts": round(time.time(), 3)})
        if gpu_fraction is not None:
            pipe.hset(cap, "gpuFraction", gpu_fraction)
        if memory:  # the measured peaks (written when they changed)
            pipe.hset(self.keys.memory(self.name), mapping={k: f"{kind}:{b}" for k, (kind, b) in memory.items()})
            pipe.expire(self.keys.memory(self.name), 30 * 24 * 3600)
        pipe.expire(cap, 3600)
        if costs.dirty and costs.per_unit:
            pipe.hset(self.keys.costs(self.name), mapping={k: round(v, 6) for k, v in costs.per_unit.items()})
        await pipe.execute()
        costs.dirty = False

    async def capacities(self, queues: Iterable[str]) -> dict[str, dict[str, str]]:
        """Other queues' capacity hashes (as `report_capacity` writes them), by queue."""
        names = list(queues)
        if not names:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for q in names:
            pipe.hgetall(self.keys.capacity(q))
        out = {}
        for q, raw in zip(names, await pipe.execute(), strict=True):
            out[q] = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                      for k, v in (raw or {}).items()}
        return out

    async def preemptions(self, job_ids: Iterable[str]) -> dict[str, int]:
        """How often each job was asked to yield its GPU."""
        ids = list(job_ids)
        pipe = self.redis.pipeline(transaction=False)
        for jid in ids:
            pipe.hget(self.keys.job(jid), "preemptions")
        return {jid: int(v or 0) for jid, v in zip(ids, await pipe.execute(), strict=True)}

    async def ask_yield(self, job_id: str) -> None:
        """Ask a running job to yield its GPU at its next checkpoint (counted in its record)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.yield_flag(job_id), "1", ex=6 * 3600)
        pipe.hincrby(self.keys.job(job_id), "preemptions", 1)
        await pipe.execute()

    async def clear_yield(self, job_id: str) -> None:
        """The job's attempt ended: it is no longer asked to yield."""
        await self.redis.delete(self.keys.yield_flag(job_id))
