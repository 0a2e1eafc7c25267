"""CapacityBoard: what a queue's consumer tells the others and the gateway of itself, and reads
of theirs: its workers now and whether it is starved (`Keys.capacity`), what its workers' starts
cost (`cold:{phase}:{count|sum|max}` there too, for the metrics), its measured costs (for ETAs)
and memory peaks (for GPU sizing), and the GPU arbitration flags of its running jobs (asked to
yield, and how often)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from dash_ray.queues.eta import CostBook
from dash_ray.queues.keys import Keys

__all__ = ["CapacityBoard", "cold_starts", "parse_cold"]

COLD_STATS = ("count", "sum", "max")


def parse_cold(raw: Mapping[object, object] | None) -> dict[str, dict[str, float]]:
    """The cold-start tally in a capacity hash (`cold:{phase}:{stat}` fields) as {phase: {stat: value}}
    (count an int); malformed fields are left out."""
    out: dict[str, dict[str, float]] = {}
    for k, v in (raw or {}).items():
        key = k.decode() if isinstance(k, bytes) else str(k)
        head, _, rest = key.partition(":")
        phase, _, stat = rest.rpartition(":")
        if head != "cold" or not phase or stat not in COLD_STATS:
            continue
        try:
            n = float(v.decode() if isinstance(v, bytes) else str(v))
        except ValueError:
            continue
        out.setdefault(phase, {})[stat] = int(n) if stat == "count" else n
    return out


async def cold_starts(redis: Redis, keys: Keys, queues: Iterable[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Each queue's cold-start tally as its consumer last reported it (`parse_cold`; {} if none)."""
    names = list(queues)
    if not names:
        return {}
    pipe = redis.pipeline(transaction=False)
    for q in names:
        pipe.hgetall(keys.capacity(q))
    return {q: parse_cold(raw) for q, raw in zip(names, await pipe.execute(), strict=True)}


class CapacityBoard:
    """One queue's capacity hash and its jobs' yield flags; the other queues' hashes."""

    def __init__(self, redis: Redis, queue: str, keys: Keys) -> None:
        self.redis = redis
        self.name = queue
        self.keys = keys

    async def report_capacity(self, costs: CostBook, slots: int, busy: int, pending: int = 0,
                              starved_since: float = 0.0, *, gpu_fraction: float | None = None,
                              memory: dict[str, tuple[str, int]] | None = None,
                              cold: Mapping[str, Mapping[str, float]] | None = None) -> None:
        """Write this queue's workers now (and since when it has been starved: workers pending
        while jobs wait; 0 if it is not), their starts' tally by phase (`WorkerPool.cold_starts`)
        and, if changed, its measured costs, for ETAs, GPU arbitration and the metrics."""
        pipe = self.redis.pipeline(transaction=False)
        cap = self.keys.capacity(self.name)
        pipe.hset(cap, mapping={"slots": slots, "busy": busy, "pending": pending,
                                "starved": round(starved_since, 3), "ts": round(time.time(), 3)})
        if gpu_fraction is not None:
            pipe.hset(cap, "gpuFraction", gpu_fraction)
        tally: dict[FieldT, EncodableT] = {
            f"cold:{phase}:{stat}": int(t[stat]) if stat == "count" else round(t[stat], 3)
            for phase, t in (cold or {}).items() for stat in COLD_STATS if stat in t}
        if tally:
            pipe.hset(cap, mapping=tally)
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
