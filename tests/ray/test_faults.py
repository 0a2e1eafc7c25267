"""Faults from the outside: Redis restarted, SIGKILLed or cutting connections; workers stopped
(SIGSTOP) or crashing. Each test has a Redis of its own (AOF, fsync always) that it breaks."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dash_ray.queues import EmbeddedRedis, JobStore, connect
from dash_ray.scheduler.cluster import Scheduler
from tests.helpers import all_done, events, executions, intervals, max_overlap, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis for this test alone, which it may stop, kill and start again on the same port."""
    server = EmbeddedRedis(tmp_path / "redis", fsync="always")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_scheduler(make_scheduler: Any, own_redis: EmbeddedRedis, tmp_path: Path) -> Any:
    """Factory: the sleep queue's scheduler on the test's own Redis; its runner records every
    execution in `tmp_path/runs/<job id>`."""
    runs = tmp_path / "runs"
    runs.mkdir()

    def start(**overrides: Any) -> Scheduler:
        overrides.setdefault("worker_idle_s", 600)
        return make_scheduler(runner={"record_dir": str(runs)}, on_redis=own_redis.url, **overrides)  # type: ignore[no-any-return]

    return start


def store_on(server: EmbeddedRedis, prefix: str) -> JobStore:
    return JobStore(connect(server.url), prefix=prefix, queues=("sleep",))


async def add(store: JobStore, n: int, **data: Any) -> list[str]:
    return [(await store.add("sleep", {"userId": "chaos", **data})).job.id for _ in range(n)]


async def test_a_queue_runs_at_full_concurrency_after_five_redis_restarts(
        own_redis: EmbeddedRedis, start_scheduler: Any, prefix: str) -> None:
    start_scheduler()
    store = store_on(own_redis, prefix)
    await all_done(store, await add(store, 5, durationS=1.0), 60)  # five warm workers, now idle
    for _ in range(5):
        own_redis.stop()
        await asyncio.sleep(2)
        own_redis.start()
        await asyncio.sleep(0.3)
    store = store_on(own_redis, prefix)
    ids = await add(store, 5, durationS=3.0, steps=3)
    views = await all_done(store, ids, 60)
    assert [v.status for v in views] == ["completed"] * 5
    spans = [s for i in ids for s in intervals(await events(store, i))]
    assert max_overlap(spans) == 5, spans


async def test_redis_sigkilled_mid_run_every_job_runs_exactly_once(
        own_redis: EmbeddedRedis, start_scheduler: Any, prefix: str, tmp_path: Path) -> None:
    start_scheduler()
    store = store_on(own_redis, prefix)
    await all_done(store, await add(store, 5, durationS=0.5), 60)  # warm
    ids = await add(store, 400, durationS=0.05)
    await asyncio.sleep(2.0)
    killed_at = time.time()
    os.kill(own_redis.pid or 0, signal.SIGKILL)  # our own redis-server
    own_redis.proc.wait(10)  # type: ignore[union-attr]
    own_redis.proc = None
    await asyncio.sleep(3)
    own_redis.start()  # replays its append-only file
    back_at = time.time()
    store = store_on(own_redis, prefix)
    after = await add(store, 10, durationS=0.05)  # accepted after the outage: they run too
    views = await all_done(store, ids + after, 120)
    assert {v.status for v in views} == {"completed"}
    counts = {i: executions(tmp_path, i) for i in ids + after}
    assert set(counts.values()) == {1}, {i: n for i, n in counts.items() if n != 1}
    before, recovered = recovery(views, killed_at, back_at)
    assert before > 10 and recovered is not None and recovered < 30, (before, recovered)
    for i in ids[:20] + after:
        evs = await events(store, i)
        assert [e["type"] for e in evs].count("job:completed") == 1


def recovery(views: list[Any], fault_at: float, back_at: float) -> tuple[int, float | None]:
    """Jobs completed in the second before the fault, and how long after the fault ended a
    second with at least 80% of that many completions began (None: never)."""
    done_at = sorted(v.finished_at or 0 for v in views)
    before = sum(fault_at - 1.0 < t <= fault_at for t in done_at)
    recovered = next((t - back_at for t in done_at if t >= back_at
                      and sum(t <= u < t + 1.0 for u in done_at) >= 0.8 * before), None)
    return before, recovered


async def test_connections_killed_every_300ms_lose_and_repeat_nothing(
        own_redis: EmbeddedRedis, start_scheduler: Any, prefix: str, tmp_path: Path) -> None:
    """CLIENT KILL of every normal and pub/sub connection every 300 ms for 20 s, in the middle
    of a backlog that outlasts it: every job runs exactly once, throughput is back to 80% within
    30 s of the storm's end, and jobs submitted after it run."""
    start_scheduler()
    store = store_on(own_redis, prefix)
    await all_done(store, await add(store, 5, durationS=0.5), 60)
    ids = await add(store, 400, durationS=0.5)  # ~10 jobs/s: a backlog of ~40 s
    await asyncio.sleep(2.0)
    storm_at = time.time()
    killer = connect(own_redis.url)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        await killer.execute_command("CLIENT", "KILL", "TYPE", "normal")
        await killer.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await asyncio.sleep(0.3)
    await killer.aclose()
    calm_at = time.time()
    store = store_on(own_redis, prefix)
    after = await add(store, 10, durationS=0.05)
    views = await all_done(store, ids + after, 180)
    assert {v.status for v in views} == {"completed"}
    counts = {i: executions(tmp_path, i) for i in ids + after}
    assert set(counts.values()) == {1}, {i: n for i, n in counts.items() if n != 1}
    before, recovered = recovery(views[:len(ids)], storm_at, calm_at)
    assert before >= 5 and recovered is not None and recovered < 30, (before, recovered)


def _pid_of(sched: Scheduler, job_id: str) -> int | None:
    return sched.stats()["sleep"]["running_jobs"].get(job_id)


async def test_a_stopped_worker_times_out_and_its_job_runs_again(
        own_redis: EmbeddedRedis, start_scheduler: Any, prefix: str, tmp_path: Path) -> None:
    sched = start_scheduler()
    store = store_on(own_redis, prefix)
    job = (await store.add("sleep", {"userId": "u", "durationS": 3.0, "steps": 30},
                           {"timeoutS": 6, "backoff": {"delayS": 0}})).job.id
    pid = await wait_for(lambda: asyncio.to_thread(_pid_of, sched, job), 60)
    await asyncio.sleep(0.5)
    os.kill(pid, signal.SIGSTOP)  # a hung driver, a deadlock: the worker stops making progress
    try:
        view = await all_done(store, [job], 60)
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGCONT)
    assert view[0].status == "completed" and view[0].attempts_made == 2
    evs = await events(store, job)
    assert any(e.get("status") == "retrying" and "timeout" in e["message"] for e in evs)
    assert executions(tmp_path, job) == 2
    nxt = await add(store, 1, durationS=0.1)
    assert (await all_done(store, nxt, 30))[0].status == "completed"


async def test_a_stopped_worker_misses_its_heartbeat_long_before_the_run_time_limit(
        own_redis: EmbeddedRedis, start_scheduler: Any, prefix: str, tmp_path: Path) -> None:
    """A training-like job with an hour of run time allowed: a stopped worker process is found
    by its missed heartbeats in seconds, killed, and the job runs again."""
    sched = start_scheduler(worker_heartbeat_s=0.5, worker_heartbeat_timeout_s=2.0)
    store = store_on(own_redis, prefix)
    job = (await store.add("sleep", {"userId": "u", "durationS": 2.0, "steps": 20},
                           {"timeoutS": 3600, "backoff": {"delayS": 0}})).job.id
    pid = await wait_for(lambda: asyncio.to_thread(_pid_of, sched, job), 60)
    await asyncio.sleep(0.5)
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        async def retried() -> bool:
            return any(e.get("status") == "retrying" for e in await events(store, job))

        await wait_for(retried, 20, interval_s=0.2)
        found_s = time.monotonic() - t0
        view = await all_done(store, [job], 60)
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGCONT)
    assert found_s < 8, found_s
    assert view[0].status == "completed" and view[0].attempts_made == 2
    evs = await events(store, job)
    assert any(e.get("status") == "retrying" and "stopped answering" in e["message"] for e in evs)
    assert executions(tmp_path, job) == 2


async def test_cancel_of_a_stopped_worker_ends_the_job_within_5s(
        own_redis: EmbeddedRedis, start_scheduler: Any, prefix: str) -> None:
    sched = start_scheduler()
    store = store_on(own_redis, prefix)
    job = (await store.add("sleep", {"userId": "u", "durationS": 60.0, "steps": 60})).job.id
    pid = await wait_for(lambda: asyncio.to_thread(_pid_of, sched, job), 60)
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        await store.cancel(job)
        view = await all_done(store, [job], 10)
        took = time.monotonic() - t0
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGCONT)
    assert view[0].status == "cancelled" and took < 5, took


async def test_a_job_that_crashes_its_worker_runs_at_most_attempts_times(
        own_redis: EmbeddedRedis, start_scheduler: Any, prefix: str, tmp_path: Path) -> None:
    start_scheduler()
    store = store_on(own_redis, prefix)
    bad = (await store.add("sleep", {"userId": "u", "crash": "segfault"},
                           {"attempts": 3, "backoff": {"delayS": 0}})).job.id
    good = await add(store, 8, durationS=0.2)
    views = await all_done(store, [bad, *good], 120)
    assert views[0].status == "failed" and "worker process died" in (views[0].error or ""), views[0].error
    assert executions(tmp_path, bad) == 3
    assert [v.status for v in views[1:]] == ["completed"] * 8
    evs = await events(store, bad)
    assert evs[-1]["type"] == "job:failed" and [e["type"] for e in evs].count("job:failed") == 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_45s_redis_outage_fails_no_long_job(
        own_redis: EmbeddedRedis, start_scheduler: Any, prefix: str, tmp_path: Path) -> None:
    """Redis away for 45 s, four times the job lock, while long jobs run: the locks expire
    meanwhile, their consumer takes them back when Redis returns, and every job finishes once
    on its first attempt."""
    start_scheduler(lock_duration_s=10, stalled_interval_s=5)
    store = store_on(own_redis, prefix)
    ids = await add(store, 3, durationS=52, steps=52)
    await wait_for(lambda: _all_active(store, ids), 60)
    own_redis.stop()
    await asyncio.sleep(45)
    own_redis.start()
    store = store_on(own_redis, prefix)
    views = await all_done(store, ids, 90)
    assert [(v.status, v.attempts_made) for v in views] == [("completed", 1)] * 3, views
    assert [executions(tmp_path, i) for i in ids] == [1, 1, 1]


async def _all_active(store: JobStore, ids: list[str]) -> bool:
    return all([(await store.get(i)).status == "active" for i in ids])


async def test_a_shutdown_past_its_drain_time_requeues_running_jobs_without_an_attempt(
        own_redis: EmbeddedRedis, start_scheduler: Any, prefix: str, tmp_path: Path) -> None:
    sched = start_scheduler()
    store = store_on(own_redis, prefix)
    # long enough to outlast the 1 s drain by far, short enough to run again in full below
    job = (await store.add("sleep", {"userId": "u", "durationS": 8, "steps": 16})).job.id
    await wait_for(lambda: _all_active(store, [job]), 60)
    out = await asyncio.to_thread(sched.stop, 1.0)
    assert out["sleep"]["requeued"] == 1, out
    view = await store.get(job)
    assert view.status == "waiting" and view.attempts_made == 0, view
    assert (await events(store, job))[-1]["status"] == "waiting"
    start_scheduler()  # the next run picks it up again
    view = (await all_done(store, [job], 60))[0]
    assert view.status == "completed" and view.attempts_made == 1 and executions(tmp_path, job) == 2


async def test_a_worker_whose_jobs_keep_failing_is_replaced(
        own_redis: EmbeddedRedis, start_scheduler: Any, prefix: str) -> None:
    """Three failures in a row on one worker (DASH_WORKER_MAX_FAILURES): the next job runs on a
    fresh worker process. Jobs one after another, so the same warm worker takes each."""
    start_scheduler()
    store = store_on(own_redis, prefix)

    async def one(**data: Any) -> Any:
        job = (await store.add("sleep", {"userId": "u", **data}, {"attempts": 1})).job.id
        return (await all_done(store, [job], 60))[0]

    first = await one()
    assert first.status == "completed"
    for _ in range(3):
        assert (await one(failAttempts=5)).status == "failed"
    after = await one()
    assert after.status == "completed" and after.result["pid"] != first.result["pid"]
