"""Honest ETAs on the real scheduler: measured costs and the queue's workers give a waiting job
its queue position and start time, which shrink as the jobs ahead finish and come true."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import pytest

from tests.helpers import events, intervals, wait_for

MIXED = [0.3, 1.2, 0.6, 0.9, 0.4, 1.5]  # seconds: the 30-job backlog cycles through these

pytestmark = pytest.mark.once  # scheduling on Ray: the same on any Redis server


async def test_a_mixed_backlog_gets_positions_and_start_times_within_a_quarter(
        make_scheduler: Any, make_store: Any) -> None:
    make_scheduler(max_pending_workers=5, worker_idle_s=600)
    store = make_store()

    async def all_done(ids: list[str], timeout_s: float) -> None:
        async def check() -> bool:
            return all([(await store.get(i)).status == "completed" for i in ids])

        await wait_for(check, timeout_s, interval_s=0.2)

    async def slots() -> int:  # the queue's workers, written by its consumer once a second
        return int((await store.redis.hget(store.keys.capacity("sleep"), "slots")) or 0)

    for _ in range(6):  # warm up until five workers stand (a worker still starting when the
        # backlog empties is called off, and a slow machine starts them slowly)
        warm = [(await store.add("sleep", {"userId": "eta", "durationS": 2.0})).job.id for _ in range(5)]
        await all_done(warm, 60)
        await asyncio.sleep(1.2)
        if await slots() == 5:
            break
    assert await slots() == 5
    warm = [(await store.add("sleep", {"userId": "eta", "durationS": d})).job.id for d in MIXED[:5]]
    await all_done(warm, 60)  # the costs of the mixed shapes measured
    await asyncio.sleep(1.2)

    ids = [(await store.add("sleep", {"userId": "eta", "durationS": MIXED[i % 6]})).job.id for i in range(30)]
    t_pred = time.time()
    predicted: dict[str, float] = {}
    for job_id in ids:
        asked = time.time()
        view = await store.get(job_id)
        if view.status == "waiting":  # each estimate counts from when it was made
            assert view.queue_position and view.eta_s is not None and view.finish_eta_s is not None
            assert view.finish_eta_s > view.eta_s >= 0
            predicted[job_id] = (asked + time.time()) / 2 + view.eta_s
    assert len(predicted) >= 20

    last = ids[-1]
    samples = []
    for _ in range(4):  # the last job's place and start time, as the ones ahead finish
        view = await store.get(last)
        samples.append((view.queue_position, view.eta_s))
        await asyncio.sleep(1.0)
    positions = [p for p, _ in samples]
    etas = [e for _, e in samples]
    assert positions == sorted(positions, reverse=True) and positions[-1] < positions[0], samples
    assert etas[-1] is not None and etas[0] is not None and etas[-1] < etas[0], samples

    await all_done(ids, 120)
    errors = []
    for job_id, when in predicted.items():
        started = intervals(await events(store, job_id))[0][0]
        errors.append(abs(when - started) / max(started - t_pred, 1.0))
    assert statistics.median(errors) <= 0.25, sorted(errors)
