"""The usage ledger on the real scheduler (local Ray with logical GPUs, the sleep runner): what
each user was charged matches their attempts as their events show them (GPU share x run time,
within 5%), with their device, CPU seconds and peak memory; an attempt whose worker was SIGKILLed under it is counted, not charged."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest

from dash_ray.queues import JobStore
from tests.helpers import all_done, events, intervals, wait_for

pytestmark = pytest.mark.once  # scheduling on Ray: the same on any Redis server


async def _charged(store: JobStore, user: str, attempts: int, lost: int = 0) -> dict[str, Any]:
    """The user's total once the ledger holds `attempts` charged (and `lost`) attempts."""

    async def check() -> dict[str, Any] | None:
        [row] = await store.ledger.read([user], time.time() - 3600, time.time(), "none")
        return row if (row["attempts"], row["lost"]) == (attempts, lost) else None

    return await wait_for(check, 30)  # type: ignore[no-any-return]


async def test_the_ledger_matches_the_attempts(make_scheduler: Any, make_store: Any) -> None:
    sched = make_scheduler()
    store = make_store()
    mine = [(await store.add("sleep", {"userId": "led-a", "durationS": 2.0})).job.id for _ in range(3)]
    other = (await store.add("sleep", {"userId": "led-b", "durationS": 0.5})).job.id
    await all_done(store, [*mine, other], 60)
    fraction = sched.stats()["sleep"]["worker_detail"][0]["resources"]["GPU"]
    assert 0 < fraction <= 1
    ran = 0.0
    for job in mine:
        ran += sum(end - start for start, end in intervals(await events(store, job)))
    row = await _charged(store, "led-a", 3)
    assert row["completed"] == 3 and row["failed"] == 0
    assert abs(row["runS"] - ran) <= 0.05 * ran, (row, ran)
    assert abs(row["gpuS"] - fraction * ran) <= 0.05 * fraction * ran, (row, fraction, ran)
    # by queue and by user (an admin's view of everyone); the other user's use is theirs alone
    [by_queue] = await store.ledger.read(["led-a"], time.time() - 3600, time.time(), "queue")
    assert by_queue["queue"] == "sleep" and by_queue["attempts"] == 3
    everyone = {r["user"]: r for r in await store.ledger.read(None, time.time() - 3600, time.time(), "user")}
    assert everyone["led-b"]["attempts"] == 1 and everyone["led-a"]["gpuS"] == row["gpuS"]
    # what each attempt took besides: its device, CPU seconds (a sleep takes little), peak memory
    [by_device] = await store.ledger.read(["led-a"], time.time() - 3600, time.time(), "device")
    assert by_device["device"] == "cpu" and by_device["gpuS"] == row["gpuS"]
    assert 0 <= row["cpuS"] < row["runS"] and row["peakMemB"] > 10 * 2**20, row


async def test_an_attempt_whose_worker_was_killed_is_not_charged(make_scheduler: Any, make_store: Any) -> None:
    sched = make_scheduler()
    store = make_store()
    job = (await store.add("sleep", {"userId": "led-k", "durationS": 1.5, "steps": 15},
                           {"attempts": 2, "backoff": {"delayS": 0}})).job.id

    def pid_of() -> int | None:
        return sched.stats()["sleep"]["running_jobs"].get(job)

    pid = await wait_for(lambda: asyncio.to_thread(pid_of), 60)
    await wait_for(lambda: _progressed(store, job), 30)  # it has run a while
    os.kill(pid, signal.SIGKILL)  # our scheduler's worker: the process dies under the job
    [view] = await all_done(store, [job], 60)
    assert view.status == "completed" and view.attempts_made == 2
    [(start, end)] = intervals(await events(store, job))[-1:]
    row = await _charged(store, "led-k", 1, lost=1)  # the second attempt alone is charged
    assert row["completed"] == 1 and abs(row["runS"] - (end - start)) <= 0.05 * (end - start), (row, end - start)


async def _progressed(store: JobStore, job: str) -> bool:
    return (await store.get(job)).progress >= 20
