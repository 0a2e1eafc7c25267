"""Delayed jobs and retry backoffs on an idle queue, from the outside (local Ray, the sleep runner):
a due job starts on time with no worker left in the pool and no other job to wake the queue."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import all_done, events, executions, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.once]  # scheduling on Ray: the same on any Redis server

LATE_S = 2.0  # how late after its due time a job may start (~0.3 s seen; slack for a busy 2-core box)


def _stats(sched: Any) -> dict[str, Any]:
    return sched.stats()["sleep"]  # type: ignore[no-any-return]


async def _pid_of(sched: Any, job_id: str) -> int | None:
    return (await asyncio.to_thread(_stats, sched))["running_jobs"].get(job_id)  # type: ignore[no-any-return]


async def _pool_empty(sched: Any) -> bool:
    workers = (await asyncio.to_thread(_stats, sched))["workers"]
    return sum(workers.values()) == 0


async def _starts(store: Any, job_id: str) -> list[float]:
    """When each attempt of the job began (its `active` events)."""
    return [e["ts"] for e in await events(store, job_id)
            if e.get("status") == "active" and e.get("message", "").startswith("started")]


async def _retried_at(store: Any, job_id: str) -> float | None:
    """When the job's failed attempt was recorded (its `retrying` event), if it was."""
    return next((e["ts"] for e in await events(store, job_id) if e.get("status") == "retrying"), None)


async def test_a_delayed_job_runs_on_time_after_the_workers_idled_out(make_scheduler: Any, make_store: Any) -> None:
    sched = make_scheduler(worker_idle_s=0.3)
    store = make_store()
    warm = (await store.add("sleep", {"userId": "u"})).job.id
    assert (await all_done(store, [warm], 60))[0].status == "completed"
    await wait_for(lambda: _pool_empty(sched), 30, interval_s=0.1)  # the worker idled out

    job = (await store.add("sleep", {"userId": "u"}, {"delayS": 2})).job.id
    queued = await store.get(job)
    assert queued.status == "delayed" and queued.created_at
    due = queued.created_at + 2
    view = (await all_done(store, [job], 2 + LATE_S + 10))[0]  # bounded: unfixed, it never runs
    assert view.status == "completed", view
    started = (await _starts(store, job))[0]
    assert started - due < LATE_S, f"started {started - due:.2f}s after its due time"


async def test_the_lone_job_whose_worker_is_killed_retries_after_its_backoff(
        make_scheduler: Any, make_store: Any, tmp_path: Path) -> None:
    """Its worker SIGKILLed mid-run, the queue's only job goes to `retrying` with a 1 s backoff and
    the pool is empty: nothing else arrives, yet it runs again on time."""
    runs = tmp_path / "runs"
    runs.mkdir()
    sched = make_scheduler(runner={"record_dir": str(runs)}, worker_idle_s=600)
    store = make_store()
    job = (await store.add("sleep", {"userId": "u", "durationS": 3.0, "steps": 30},
                           {"attempts": 2, "backoff": {"type": "fixed", "delayS": 1}})).job.id
    pid = await wait_for(lambda: _pid_of(sched, job), 60)
    await wait_for(lambda: _starts(store, job), 10)  # its attempt has begun
    os.kill(pid, signal.SIGKILL)

    failed_at = await wait_for(lambda: _retried_at(store, job), 30)
    view = (await all_done(store, [job], 1 + LATE_S + 3 + 10))[0]  # bounded: unfixed, it stays `retrying`
    assert view.status == "completed" and view.attempts_made == 2, view
    assert executions(tmp_path, job) == 2
    again = (await _starts(store, job))[1]
    assert again - (failed_at + 1) < LATE_S, f"retried {again - failed_at - 1:.2f}s after its backoff"


async def test_the_lone_job_that_fails_retries_after_its_backoff_once_its_worker_idled_out(
        make_scheduler: Any, make_store: Any) -> None:
    """A failed attempt with a 1 s backoff, and the worker idles out meanwhile: it still runs again."""
    make_scheduler(worker_idle_s=0.3)
    store = make_store()
    job = (await store.add("sleep", {"userId": "u", "failAttempts": 1},
                           {"attempts": 2, "backoff": {"type": "fixed", "delayS": 1}})).job.id

    failed_at = await wait_for(lambda: _retried_at(store, job), 60)
    view = (await all_done(store, [job], 1 + LATE_S + 10))[0]  # bounded: unfixed, it stays `retrying`
    assert view.status == "completed" and view.attempts_made == 2, view
    again = (await _starts(store, job))[-1]
    assert again - (failed_at + 1) < LATE_S, f"retried {again - failed_at - 1:.2f}s after its backoff"
