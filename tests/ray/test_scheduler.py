"""The Ray scheduling core on a local Ray and a real Redis, with the sleep runner."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

from tests.helpers import assert_well_formed, events, intervals, max_overlap, wait_for, wait_status

TRN = {"userId": "alice", "prompt": "sks", "imageUrls": ["https://img.example.com/1.png"]}
UPS = {"userId": "alice", "imageUrl": "https://img.example.com/1.png"}
GEN = {"userId": "alice", "prompt": "a fox"}


async def test_per_queue_concurrency_reaches_and_never_exceeds_limits(make_scheduler: Any, make_store: Any) -> None:
    # Every slot's worker is started at once (not 4 at a time, the default) and jobs last long
    # enough that a worker that imports slowly on a busy machine still finds work.
    make_scheduler(queues=("training", "upscaling", "generation"), runner={"duration_s": 2.0, "steps": 2},
                   max_pending_workers=8)
    store = make_store()
    ids: dict[str, list[str]] = {"generation": [], "upscaling": [], "training": []}
    adds = [("generation", GEN)] * 12 + [("upscaling", UPS)] * 8 + [("training", TRN)] * 4
    for queue, data in adds:
        ids[queue].append((await store.add(queue, data)).job.id)
    for job_ids in ids.values():
        for job_id in job_ids:
            await wait_status(store, job_id, ("completed",), timeout_s=90)
    for queue, limit in (("generation", 5), ("upscaling", 3), ("training", 1)):
        spans = []
        for job_id in ids[queue]:
            evs = await events(store, job_id)
            assert_well_formed(evs)
            spans += intervals(evs)
        assert len(spans) == len(ids[queue])
        assert max_overlap(spans) == limit, (queue, max_overlap(spans))


async def test_workers_hold_their_gpu_fraction_and_queue_slot(make_scheduler: Any, make_store: Any) -> None:
    sched = make_scheduler(queues=("upscaling",), runner={"duration_s": 0.5})
    store = make_store()
    ids = [(await store.add("upscaling", UPS)).job.id for _ in range(4)]
    for job_id in ids:
        await wait_status(store, job_id, ("completed",), timeout_s=60)
    workers = [w for w in (await asyncio.to_thread(sched.stats))["upscaling"]["worker_detail"]
               if w["state"] != "pending"]  # a pending worker is not placed: it holds nothing
    assert 1 <= len(workers) <= 3
    for w in workers:
        assert w["resources"]["GPU"] == 0.33 and w["resources"]["dash_upscaling"] == 1


async def test_training_priorities_start_in_order(make_scheduler: Any, make_store: Any) -> None:
    make_scheduler(queues=("training",), runner={"duration_s": 0.3})
    store = make_store()
    first = (await store.add("training", TRN, {"jobId": "blocker"})).job.id
    await wait_status(store, first, ("active",))
    for prio in (3, 1, 2):
        await store.add("training", TRN, {"priority": prio, "jobId": f"p{prio}"})
    for job_id in ("p1", "p2", "p3"):
        await wait_status(store, job_id, ("completed",), timeout_s=30)
    starts = {}
    for job_id in ("p1", "p2", "p3"):
        evs = await events(store, job_id)
        assert_well_formed(evs)
        starts[job_id] = intervals(evs)[0][0]
    assert sorted(starts, key=starts.__getitem__) == ["p1", "p2", "p3"]


async def test_cancel_running_job_within_a_second_and_worker_stays_usable(make_scheduler: Any, make_store: Any) -> None:
    make_scheduler(queues=("sleep",))
    store = make_store()
    await store.add("sleep", {"userId": "alice", "jobId": "long", "durationS": 30, "steps": 30})

    async def reported() -> bool:
        return any(e.get("step") for e in await events(store, "long"))

    await wait_for(reported, 30)
    first = next(e for e in await events(store, "long") if e.get("step"))
    t0 = time.time()
    view = await store.cancel("long")
    assert view.status == "active"
    done = await wait_status(store, "long", ("cancelled",), timeout_s=5)
    evs = await events(store, "long")
    assert_well_formed(evs)
    last = evs[-1]
    assert last["type"] == "job:failed" and last["error"] == "cancelled" and last["status"] == "cancelled"
    assert last["ts"] - t0 <= 1.0, last["ts"] - t0
    assert done.status == "cancelled"
    # the same worker then completes another job
    await store.add("sleep", {"userId": "alice", "jobId": "after"})
    after = await wait_status(store, "after", ("completed",), timeout_s=30)
    assert after.result["pid"] == first.get("pid", after.result["pid"])
    pids = {e["result"]["pid"] for e in await events(store, "after") if e["type"] == "job:completed"}
    assert len(pids) == 1


async def test_worker_killed_mid_job_retries_on_a_fresh_worker(make_scheduler: Any, make_store: Any) -> None:
    sched = make_scheduler(queues=("sleep",))
    store = make_store()
    await store.add("sleep", {"userId": "alice", "jobId": "victim", "durationS": 2, "steps": 4},
                    {"attempts": 3, "backoff": {"type": "fixed", "delayS": 0}})
    await wait_status(store, "victim", ("active",))

    async def worker_pid() -> int | None:
        stats = await asyncio.to_thread(sched.stats)
        return stats["sleep"]["running_jobs"].get("victim")

    pid = await wait_for(worker_pid, 30)
    os.kill(pid, signal.SIGKILL)
    view = await wait_status(store, "victim", ("completed",), timeout_s=60)
    assert view.attempts_made == 2 and view.result["attempt"] == 2
    assert view.result["pid"] != pid
    evs = await events(store, "victim")
    assert_well_formed(evs)
    assert any(e.get("status") == "retrying" and "worker process died" in e["message"] for e in evs)


async def test_consumer_killed_with_50_in_flight_completes_each_once(make_scheduler: Any, make_store: Any) -> None:
    sched = make_scheduler(queues=("sleep",), runner={"duration_s": 0.5}, lock_duration_s=2, stalled_interval_s=1)
    store = make_store()
    ids = [(await store.add("sleep", {"userId": "alice"})).job.id for _ in range(50)]

    async def some_running() -> dict[str, Any] | None:
        stats = (await asyncio.to_thread(sched.stats))["sleep"]
        return stats if stats["running"] >= 3 and stats["completed"] >= 3 else None

    stats = await wait_for(some_running, 60)
    os.kill(stats["pid"], signal.SIGKILL)

    async def all_done() -> bool:
        counts = await store.counts("sleep")
        return counts["completed"] == 50

    await wait_for(all_done, 120, interval_s=0.25)
    restarted = (await asyncio.to_thread(sched.stats))["sleep"]
    assert restarted["pid"] != stats["pid"]
    counts = await store.counts("sleep")
    assert counts == {"waiting": 0, "delayed": 0, "active": 0, "completed": 50, "failed": 0}
    stalled = 0
    for job_id in ids:
        evs = await events(store, job_id)
        assert_well_formed(evs)
        assert sum(e["type"] == "job:completed" for e in evs) == 1
        stalled += any("recovered" in e.get("message", "") for e in evs)
    assert stalled >= 1  # the jobs the dead consumer held came back through stalled recovery


async def test_retry_per_options_through_ray(make_scheduler: Any, make_store: Any) -> None:
    make_scheduler(queues=("sleep",))
    store = make_store()
    await store.add("sleep", {"userId": "alice", "jobId": "flaky", "failAttempts": 2},
                    {"attempts": 3, "backoff": {"type": "exponential", "delayS": 0.1}})
    view = await wait_status(store, "flaky", ("completed", "failed"), timeout_s=30)
    assert view.status == "completed" and view.result["attempt"] == 3
    await store.add("sleep", {"userId": "alice", "jobId": "doomed", "failAttempts": 5, "failMessage": "bad luck"},
                    {"attempts": 2, "backoff": {"type": "fixed", "delayS": 0}})
    view = await wait_status(store, "doomed", ("failed",), timeout_s=30)
    assert "bad luck" in view.error
    for job_id in ("flaky", "doomed"):
        assert_well_formed(await events(store, job_id))


async def test_drain_finishes_running_and_keeps_waiting(make_scheduler: Any, make_store: Any) -> None:
    sched = make_scheduler(queues=("training",), runner={"duration_s": 1.0})
    store = make_store()
    for i in range(3):
        await store.add("training", TRN, {"jobId": f"d{i}"})
    await wait_status(store, "d0", ("active",))
    t0 = time.monotonic()
    out = await asyncio.to_thread(sched.drain, 10)
    assert time.monotonic() - t0 < 10
    assert out["training"]["unfinished"] == 0
    assert (await store.get("d0")).status == "completed"
    assert [(await store.get(f"d{i}")).status for i in (1, 2)] == ["waiting", "waiting"]
    await asyncio.to_thread(sched.stop, 1)
    make_scheduler(queues=("training",), runner={"duration_s": 0.1})
    for i in (1, 2):
        await wait_status(store, f"d{i}", ("completed",), timeout_s=60)


async def test_idle_workers_stop(make_scheduler: Any, make_store: Any) -> None:
    sched = make_scheduler(queues=("sleep",), worker_idle_s=1.0)
    store = make_store()
    await store.add("sleep", {"userId": "alice", "jobId": "one"})
    await wait_status(store, "one", ("completed",), timeout_s=30)

    async def no_workers() -> bool:
        stats = (await asyncio.to_thread(sched.stats))["sleep"]
        return not stats["worker_detail"]

    await wait_for(no_workers, 10, interval_s=0.25)


async def test_short_jobs_go_in_batches_long_ones_one_by_one(make_scheduler: Any, make_store: Any) -> None:
    sched = make_scheduler(queues=("sleep",))
    store = make_store()
    ids = [(await store.add("sleep", {"userId": "alice"})).job.id for _ in range(300)]
    for job_id in ids:
        await wait_status(store, job_id, ("completed",), timeout_s=60)
    stats = (await asyncio.to_thread(sched.stats))["sleep"]
    assert stats["completed"] == 300 and stats["failed"] == 0
    assert stats["worker_calls"] <= 150, stats  # several sleep(0) jobs per Ray call
    assert stats["batch_size"] > 1 and stats["job_ms"] < 10
    for job_id in ids[::30]:
        evs = await events(store, job_id)
        assert_well_formed(evs)
        assert sum(e.get("message", "").startswith("started") for e in evs) == 1
    await asyncio.to_thread(sched.stop, 2)

    sched = make_scheduler(queues=("sleep",), runner={"duration_s": 0.05})
    ids = [(await store.add("sleep", {"userId": "alice"})).job.id for _ in range(8)]
    for job_id in ids:
        await wait_status(store, job_id, ("completed",), timeout_s=60)
    stats = (await asyncio.to_thread(sched.stats))["sleep"]
    assert stats["worker_calls"] == 8 and stats["batch_size"] == 1  # 50 ms jobs: over the 20 ms budget


async def test_worker_killed_mid_batch_retries_the_running_job_and_requeues_the_rest(
        make_scheduler: Any, make_store: Any) -> None:
    sched = make_scheduler(queues=("sleep",))
    store = make_store()
    for job_id in [(await store.add("sleep", {"userId": "alice"})).job.id for _ in range(20)]:
        await wait_status(store, job_id, ("completed",), timeout_s=60)  # the queue's jobs are measured short
    assert (await asyncio.to_thread(sched.stats))["sleep"]["batch_size"] > 3
    await store.pause("sleep")
    await store.add("sleep", {"userId": "alice", "jobId": "victim", "durationS": 3, "steps": 3},
                    {"attempts": 2, "backoff": {"type": "fixed", "delayS": 0}})
    for i in range(3):
        await store.add("sleep", {"userId": "alice", "jobId": f"behind{i}"}, {"attempts": 1})
    await store.resume("sleep")
    await wait_status(store, "victim", ("active",))

    async def batched_with_victim() -> int | None:
        running = (await asyncio.to_thread(sched.stats))["sleep"]["running_jobs"]
        pid = running.get("victim")
        return pid if pid and all(running.get(f"behind{i}") == pid for i in range(3)) else None

    pid = await wait_for(batched_with_victim, 10)
    os.kill(pid, signal.SIGKILL)
    view = await wait_status(store, "victim", ("completed",), timeout_s=60)
    assert view.result["attempt"] == 2 and view.result["pid"] != pid
    for i in range(3):  # never started, so no attempt used: a one-attempt job still completes
        view = await wait_status(store, f"behind{i}", ("completed", "failed"), timeout_s=60)
        assert view.status == "completed" and view.result["attempt"] == 1
        evs = await events(store, f"behind{i}")
        assert_well_formed(evs)
        assert not any(e.get("status") == "retrying" for e in evs)
    assert (await asyncio.to_thread(sched.stats))["sleep"]["requeued"] >= 3


async def test_a_higher_priority_job_overtakes_a_backlog_of_batched_short_jobs(
        make_scheduler: Any, make_store: Any) -> None:
    sched = make_scheduler(queues=("sleep",), runner={"duration_s": 0.003})
    store = make_store()
    for job_id in [(await store.add("sleep", {"userId": "alice"})).job.id for _ in range(20)]:
        await wait_status(store, job_id, ("completed",), timeout_s=60)
    assert (await asyncio.to_thread(sched.stats))["sleep"]["batch_size"] > 1
    await store.pause("sleep")
    backlog = [(await store.add("sleep", {"userId": "alice"}, {"priority": 3})).job.id for _ in range(400)]
    await store.resume("sleep")
    await store.add("sleep", {"userId": "alice", "jobId": "urgent"}, {"priority": 1})
    await wait_status(store, "urgent", ("completed",), timeout_s=60)
    for job_id in backlog:
        await wait_status(store, job_id, ("completed",), timeout_s=60)
    urgent = intervals(await events(store, "urgent"))[0][0]
    before = 0
    for job_id in backlog:
        evs = await events(store, job_id)
        assert_well_formed(evs)
        before += intervals(evs)[0][0] < urgent
    # At most the batches already handed out (5 workers x 8) and those taken while it was being
    # added run first (3 in runs here); in plain FIFO order it would have come after all 400.
    assert before < 100, before


async def test_consumers_show_as_bullmq_workers(make_scheduler: Any, make_store: Any, redis: Any,
                                                prefix: str) -> None:
    """Node BullMQ's `Queue.getWorkers()` (bull-board's Workers list) finds clients named
    `{prefix}:{base64(queue)}` or that followed by `:w:<name>`: each consumer's worker
    connection carries such a name from the consumer's start, also while a backlog keeps it
    from ever waiting for a job (that wait used to be what opened the named connection)."""
    import base64

    store = make_store()
    ids = [(await store.add("generation", GEN)).job.id for _ in range(30)]
    make_scheduler(queues=("generation",), runner={"duration_s": 0.3})
    await wait_status(store, ids[0], ("active", "completed"), timeout_s=60)
    wanted = f"{prefix}:{base64.b64encode(b'generation').decode()}:w:"
    names = [c.get("name", "") for c in await redis.client_list()]
    waiting = (await store.counts("generation"))["waiting"]
    assert waiting > 0, "the backlog drained before the check; it proves nothing"
    assert any(n.startswith(wanted + "dash-") for n in names), [n for n in names if n]
    for job_id in ids:
        await wait_status(store, job_id, ("completed",), timeout_s=60)
