"""Stalled-job recovery: a consumer process SIGKILLed mid-job; its job completes exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from dash_ray.queues import LockLost
from tests.helpers import complete, take_one, wait_for

HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from dash_ray.queues import JobStore, QueueConsumer, connect

    async def main(url, prefix):
        r, b = connect(url), connect(url, blocking=True)
        store = JobStore(r, prefix=prefix, queues=("sleep",))
        c = QueueConsumer(r, b, "sleep", store.lifecycle, prefix=prefix, lock_duration_s=1.0,
                          stalled_interval_s=0.5)
        c.start_maintenance()
        [job] = await c.take(block_s=10)
        print("TAKEN", job.id, flush=True)
        await asyncio.sleep(3600)   # "running" the job, renewing its lock, until killed

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


async def test_sigkilled_consumer_job_completes_exactly_once(
    make_store: Any, make_consumer: Any, redis_url: str, prefix: str
) -> None:
    store = make_store()
    await store.add("sleep", {"userId": "alice", "jobId": "victim"})
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, redis_url, prefix], stdout=subprocess.PIPE, text=True)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)  # type: ignore[union-attr]
        assert line.strip() == "TAKEN victim"
        second = make_consumer("sleep", store, lock_duration_s=1.0, stalled_interval_s=0.5)
        # While the holder is alive and renewing, nothing is recovered.
        await asyncio.sleep(1.5)
        await second.locks.recover_stalled()
        assert await take_one(second) is None
        assert (await store.get("victim")).status == "active"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        t0 = time.monotonic()
        job = None
        while job is None and time.monotonic() - t0 < 10:
            await second.locks.recover_stalled()
            job = await take_one(second, block_s=0.25)
        assert job is not None and job.id == "victim"
        recovered_after = time.monotonic() - t0
        await complete(second, job, {"by": "second"})
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    view = await store.get("victim")
    assert view.status == "completed" and view.result == {"by": "second"}
    events = [json.loads(e) for e in await store.bus.replay("victim")]
    assert sum(e["type"] == "job:completed" for e in events) == 1
    assert [e["type"] for e in events][-1] == "job:completed"
    assert [e["seq"] for e in events] == sorted({e["seq"] for e in events})
    assert recovered_after < 5


async def test_a_consumer_that_lost_its_lock_cannot_complete(make_store: Any, make_consumer: Any) -> None:
    store = make_store()
    await store.add("sleep", {"userId": "alice", "jobId": "zombie"})
    slow = make_consumer("sleep", store, lock_duration_s=1.0, stalled_interval_s=0.5)
    fast = make_consumer("sleep", store, lock_duration_s=1.0, stalled_interval_s=0.5)
    stale = await take_one(slow)
    assert stale is not None
    # slow never renews; its lock expires and the job is recovered by `fast`.
    job = None
    t0 = time.monotonic()
    while job is None and time.monotonic() - t0 < 10:
        await fast.locks.recover_stalled()
        job = await take_one(fast, block_s=0.25)
    assert job is not None
    await complete(fast, job, {"by": "fast"})
    with pytest.raises(LockLost):
        await complete(slow, stale, {"by": "slow"})
    events = [json.loads(e) for e in await store.bus.replay("zombie")]
    assert sum(e["type"] == "job:completed" for e in events) == 1
    assert (await store.get("zombie")).result == {"by": "fast"}


async def test_a_stale_attempt_cannot_write_progress_or_completion(make_store: Any, make_consumer: Any) -> None:
    """An attempt whose lock expired (a pause longer than the lock) while the job ran again
    elsewhere: its events are refused in Redis (and tell it to stop), its completion is refused,
    and the job ends with the new attempt's state and result."""
    from dash_ray.models import JobProgressEvent
    from dash_ray.queues import started_event

    store = make_store()
    await store.add("sleep", {"userId": "alice", "jobId": "fenced"})
    slow = make_consumer("sleep", store, lock_duration_s=1.0, stalled_interval_s=0.5)
    fast = make_consumer("sleep", store, lock_duration_s=1.0, stalled_interval_s=0.5)
    [stale] = await slow.take()
    old = slow.worker_lifecycle
    assert old.publish([started_event("fenced", "sleep", "alice", 1, 3)], [stale.token]) == [False]
    job = None
    t0 = time.monotonic()
    while job is None and time.monotonic() - t0 < 10:
        await fast.locks.recover_stalled()
        job = await take_one(fast, block_s=0.25)
    assert job is not None and job.token != stale.token
    progress = JobProgressEvent(job_id="fenced", queue="sleep", user_id="alice", status="active", progress=50,
                                message="stale step")
    before = await store.bus.state("fenced")
    assert old.publish([progress], [stale.token]) == [True]  # refused: the stale attempt is told to stop
    assert await store.bus.state("fenced") == before
    # Checkpoints: the new attempt's commit counts, the stale attempt's is refused.
    assert fast.worker_lifecycle.commit_checkpoint("fenced", "sleep", job.token, "new.pt") == (True, "", False)
    assert old.commit_checkpoint("fenced", "sleep", stale.token, "stale.pt") == (False, "", False)
    assert old.checkpoint_of("fenced") == "new.pt"
    assert fast.worker_lifecycle.commit_checkpoint("fenced", "sleep", job.token, "new2.pt") == (True, "new.pt", False)
    # asked to yield its GPU (GPU arbitration): the next commit says so
    await store.redis.set(store.keys.yield_flag("fenced"), "1")
    assert fast.worker_lifecycle.commit_checkpoint("fenced", "sleep", job.token, "new3.pt") == (True, "new2.pt", True)
    await store.redis.delete(store.keys.yield_flag("fenced"))
    await complete(fast, job, {"by": "fast"})
    with pytest.raises(LockLost):
        await complete(slow, stale, {"by": "slow"})
    # After the job is final, no attempt's event moves it back.
    assert old.publish([progress], [stale.token]) == [True]
    assert fast.worker_lifecycle.publish([progress], [job.token]) == [True]
    view = await store.get("fenced")
    assert view.status == "completed" and view.result == {"by": "fast"}
    assert old.commit_checkpoint("fenced", "sleep", stale.token, "late.pt") == (False, "", False)  # final: refused
    evs = [json.loads(e) for e in await store.bus.replay("fenced")]
    assert [e["type"] for e in evs][-1] == "job:completed"
    assert not any(e.get("message") == "stale step" for e in evs)


async def test_a_consumers_bullmq_worker_name_shows_at_start_and_is_back_after_its_connection_is_killed(
    make_store: Any, redis: Any, redis_url: str, prefix: str
) -> None:
    """bull-board lists a consumer by its named blocking connection. It is there once maintenance
    starts, before any wait for a job, and a connection killed from outside (`CLIENT KILL`, as a
    proxy or an admin would) is opened again within a stalled-check interval."""
    from dash_ray.queues import Keys, QueueConsumer, connect

    name = Keys(prefix).worker_client("sleep", "dash-test")
    blocking = connect(redis_url, blocking=True, name=name)
    consumer = QueueConsumer(redis, blocking, "sleep", make_store().lifecycle, prefix=prefix,
                             stalled_interval_s=0.3)

    async def named() -> list[str]:
        return [c["id"] for c in await redis.client_list() if c.get("name") == name]

    consumer.start_maintenance()
    try:
        [first] = await wait_for(named, timeout_s=5)
        await redis.execute_command("CLIENT", "KILL", "ID", first)

        async def reopened() -> bool:
            ids = await named()
            return bool(ids) and first not in ids

        await wait_for(reopened, timeout_s=5)
    finally:
        await consumer.close()
        await blocking.aclose()
