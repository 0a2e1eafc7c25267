"""Test helpers: waiting on job states and checking event streams."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

TERMINAL = ("job:completed", "job:failed")


async def wait_for(predicate: Any, timeout_s: float = 30.0, interval_s: float = 0.05) -> Any:
    """Poll an async predicate until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {predicate}")
        await asyncio.sleep(interval_s)


async def wait_status(store: Any, job_id: str, statuses: tuple[str, ...], timeout_s: float = 30.0) -> Any:
    """Wait until the job's view has one of `statuses`; returns the view."""
    async def check() -> Any:
        view = await store.get(job_id)
        return view if view.status in statuses else None

    return await wait_for(check, timeout_s)


async def events(store: Any, job_id: str) -> list[dict[str, Any]]:
    """All events of a job from its replay stream."""
    return [json.loads(e) for e in await store.bus.replay(job_id)]


def assert_well_formed(evs: list[dict[str, Any]]) -> None:
    """Strictly increasing seq, exactly one terminal event, and it is the last."""
    seqs = [e["seq"] for e in evs]
    assert seqs == sorted(set(seqs)) and seqs[0] == 1, seqs
    terminal = [i for i, e in enumerate(evs) if e["type"] in TERMINAL]
    assert len(terminal) == 1 and terminal[0] == len(evs) - 1, [e["type"] for e in evs]


def intervals(evs: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(start, end) of each attempt: an `active` event to the next retry or terminal event."""
    out = []
    start = None
    for e in evs:
        if e["type"] == "job:progress" and e["status"] == "active" and e.get("message", "").startswith("started"):
            start = e["ts"]
        elif start is not None and (e["type"] in TERMINAL or e.get("status") in ("retrying", "waiting")):
            out.append((start, e["ts"]))
            start = None
    return out


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one instant (an end at t closes before a start at t)."""
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda p: (p[0], p[1]))
    best = cur = 0
    for _t, d in points:
        cur += d
        best = max(best, cur)
    return best


async def take_one(consumer: Any, block_s: float = 0.0) -> Any:
    """Take one job the way the scheduler does and start it the way a worker does (its `active`
    event through a worker's SyncLifecycle, which `make_consumer` gives each consumer as
    `worker_lifecycle`); None if nothing came within block_s."""
    from dash_ray.queues import started_event

    jobs = await consumer.take(block_s)
    if not jobs:
        return None
    job = jobs[0]
    await asyncio.to_thread(consumer.worker_lifecycle.publish,
                            [started_event(job.id, job.queue, job.user_id, job.attempt, job.attempts)])
    return job


async def complete(consumer: Any, job: Any, result: Any) -> None:
    """Complete one job as the scheduler does; raises LockLost if it was not ours any more."""
    _next, lost = await consumer.complete([(job, result)])
    if lost:
        raise lost[0]
