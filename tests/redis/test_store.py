"""The durable queues on a real Redis: ordering, delay, retries, idempotency, cancel, retention."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import pytest

from dash_ray.errors import InvalidJobState, InvalidPayload, JobConflict, UnknownQueue
from dash_ray.models.status import CANCELLING
from dash_ray.queues import started_event
from tests.helpers import assert_well_formed, complete, events, take_one, wait_for

TRN = {"userId": "bob", "prompt": "sks dog", "imageUrls": ["https://img.example.com/1.png"]}


def sleep_job(**kw: Any) -> dict[str, Any]:
    return {"userId": "alice", **kw}


async def drain(consumer: Any, result: Any = None) -> list[str]:
    order = []
    while (job := await take_one(consumer)) is not None:
        order.append(job.id)
        await complete(consumer, job, result or {"ok": True})
    return order


async def test_priority_order_then_fifo(make_store: Any, make_consumer: Any) -> None:
    store = make_store()
    for i, prio in enumerate([3, 1, 2, 1, 3, 2]):
        await store.add("training", {**TRN, "loraId": f"l{i}"}, {"priority": prio})
    order = await drain(make_consumer("training", store))
    assert order == ["l1", "l3", "l2", "l5", "l0", "l4"]


async def test_delay(make_store: Any, make_consumer: Any) -> None:
    store = make_store()
    await store.add("sleep", sleep_job(jobId="later"), {"delayS": 0.6})
    await store.add("sleep", sleep_job(jobId="now"))
    assert (await store.get("later")).status == "delayed"
    c = make_consumer("sleep", store)
    t0 = time.monotonic()
    first = await take_one(c)
    assert first is not None and first.id == "now"
    await complete(c, first, {})
    assert await take_one(c) is None
    job = await take_one(c, block_s=3)
    assert job is not None and job.id == "later"
    assert time.monotonic() - t0 >= 0.5


async def test_retry_with_exponential_backoff_then_success(make_store: Any, make_consumer: Any) -> None:
    store = make_store()
    await store.add("sleep", sleep_job(jobId="flaky"), {"attempts": 3, "backoff": {"type": "exponential", "delayS": 0.2}})
    c = make_consumer("sleep", store)
    starts = []
    for expected_delay in (0.2, 0.4):
        job = await take_one(c, block_s=3)
        assert job is not None
        starts.append(time.monotonic())
        out = await c.fail(job, "transient")
        assert out.status == "retrying" and out.delay_s == pytest.approx(expected_delay)
        assert (await store.get("flaky")).status == "retrying"
    job = await take_one(c, block_s=3)
    assert job is not None and job.attempt == 3
    starts.append(time.monotonic())
    await complete(c, job, {"done": 1})
    view = await store.get("flaky")
    assert view.status == "completed" and view.attempts_made == 3 and view.result == {"done": 1}
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[0] >= 0.18 and gaps[1] >= 0.38  # exponential: 0.2 s then 0.4 s


async def test_final_failure_after_last_attempt(make_store: Any, make_consumer: Any) -> None:
    store = make_store()
    await store.add("sleep", sleep_job(jobId="doomed"), {"attempts": 2, "backoff": {"type": "fixed", "delayS": 0}})
    c = make_consumer("sleep", store)
    for _ in range(2):
        job = await take_one(c, block_s=2)
        assert job is not None
        out = await c.fail(job, "always broken")
    assert out.status == "failed"
    view = await store.get("doomed")
    assert view.status == "failed" and view.error == "always broken" and view.attempts_made == 2
    assert await take_one(c) is None
    events = [json.loads(e) for e in await store.bus.replay("doomed")]
    assert [e["type"] for e in events][-1] == "job:failed"
    assert sum(e["type"] == "job:failed" for e in events) == 1


async def test_idempotent_add_and_conflict(make_store: Any) -> None:
    store = make_store()
    first = await store.add("generation", {"userId": "a", "prompt": "cat", "jobId": "same"})
    again = await store.add("generation", {"userId": "a", "prompt": "cat", "jobId": "same"})
    assert first.created and not again.created and again.job.id == "same"
    with pytest.raises(JobConflict):
        await store.add("generation", {"userId": "a", "prompt": "dog", "jobId": "same"})
    with pytest.raises(JobConflict):
        await store.add("upscaling", {"userId": "a", "imageUrl": "https://x.y/z.png", "jobId": "same"})
    assert (await store.counts("generation"))["waiting"] == 1
    # options.jobId works too and is the same id space
    via_opts = await store.add("generation", {"userId": "a", "prompt": "cat"}, {"jobId": "same"})
    assert not via_opts.created


async def test_concurrent_adds_of_one_id_make_one_job(make_store: Any) -> None:
    store = make_store()
    results = await asyncio.gather(*[
        store.add("generation", {"userId": "a", "prompt": "cat", "jobId": "race"}) for _ in range(10)
    ])
    assert sum(r.created for r in results) == 1
    assert (await store.counts("generation"))["waiting"] == 1


async def test_cancel_waiting_job(make_store: Any, make_consumer: Any) -> None:
    store = make_store()
    await store.add("sleep", sleep_job(jobId="c1"))
    await store.add("sleep", sleep_job(jobId="c2"))
    view = await store.cancel("c1")
    assert view.status == "cancelled"
    assert await drain(make_consumer("sleep", store)) == ["c2"]
    with pytest.raises(InvalidJobState):
        await store.cancel("c1")
    last = json.loads((await store.bus.replay("c1"))[-1])
    assert last["type"] == "job:failed" and last["error"] == "cancelled" and last["status"] == "cancelled"


async def test_cancel_running_job_sets_flag(make_store: Any, make_consumer: Any) -> None:
    store = make_store()
    await store.add("sleep", sleep_job(jobId="r1"))
    c = make_consumer("sleep", store)
    job = await take_one(c)
    view = await store.cancel("r1")
    assert view.status == "active"
    assert await store.redis.exists(store.keys.cancel("r1"))  # the flag a worker reads with each event
    seen: list[str] = []
    finish = c.lifecycle.finish

    async def read_then_finish(event: Any, **kw: Any) -> Any:
        # between BullMQ's move to failed and our final event: a reader says cancelled already
        seen.append((await store.get("r1")).status)
        seen.extend(v.status for v in (await store.list("alice")).jobs if v.id == "r1")
        return await finish(event, **kw)

    c.lifecycle.finish = read_then_finish
    out = await c.fail(job, "cancelled", cancelled=True)
    assert out.status == "cancelled" and seen == ["cancelled", "cancelled"]
    assert (await store.get("r1")).status == "cancelled"
    assert not await store.redis.exists(store.keys.cancel("r1"))
    assert not await store.redis.hexists(store.keys.job("r1"), CANCELLING)  # the final event took it


async def test_pause_resume(make_store: Any, make_consumer: Any) -> None:
    store = make_store()
    await store.pause("sleep")
    assert await store.is_paused("sleep")
    await store.add("sleep", sleep_job(jobId="p1"))
    c = make_consumer("sleep", store)
    assert await take_one(c) is None
    assert await c.backlog() == 0
    await store.resume("sleep")
    assert not await store.is_paused("sleep")
    assert await drain(c) == ["p1"]


async def test_counts_and_queue_position(make_store: Any, make_consumer: Any) -> None:
    store = make_store()
    views = [(await store.add("sleep", sleep_job(jobId=f"q{i}"), {"priority": 2})).job for i in range(4)]
    assert [v.queue_position for v in views] == [1, 2, 3, 4]
    hi = (await store.add("sleep", sleep_job(jobId="vip"), {"priority": 1})).job
    assert hi.queue_position == 1
    assert (await store.get("q0")).queue_position == 2
    await store.add("sleep", sleep_job(jobId="d"), {"delayS": 60})
    c = make_consumer("sleep", store)
    job = await take_one(c)
    assert job is not None and job.id == "vip"
    await complete(c, job, {})
    job = await take_one(c)
    assert job is not None
    await c.fail(job, "x", retry=False)
    counts = await store.counts("sleep")
    assert counts == {"waiting": 3, "delayed": 1, "active": 0, "completed": 1, "failed": 1}
    assert (await store.get("q3")).queue_position == 3


async def test_retention_keeps_last_n(make_store: Any, make_consumer: Any, redis: Any, prefix: str) -> None:
    store = make_store(keep_completed=3, keep_failed=2)
    for i in range(8):
        await store.add("sleep", sleep_job(jobId=f"k{i}"))
    c = make_consumer("sleep", store)
    for i in range(8):
        job = await take_one(c)
        assert job is not None
        if i < 5:
            await complete(c, job, {"i": i})
        else:
            await c.fail(job, "no", retry=False)
    counts = await store.counts("sleep")
    assert counts["completed"] == 3 and counts["failed"] == 2
    # BullMQ's job hashes and our per-job keys are bounded too
    bull_hashes = [k async for k in redis.scan_iter(match=f"{prefix}:sleep:k*") if k.count(":") == 2]
    ours = [k async for k in redis.scan_iter(match=f"{prefix}:__dash__:job:*")]
    assert len(bull_hashes) == 5
    assert len(ours) == 5


async def test_history_pagination_by_queue_and_status(make_store: Any, make_consumer: Any) -> None:
    store = make_store()
    for i in range(7):
        await store.add("sleep", sleep_job(jobId=f"h{i}"))
    await store.add("generation", {"userId": "alice", "prompt": "x", "jobId": "g0"})
    await store.add("sleep", {"userId": "mallory", "jobId": "other"})
    c = make_consumer("sleep", store)
    job = await take_one(c)
    await complete(c, job, {})
    page1 = await store.list("alice", limit=3)
    assert [v.id for v in page1.jobs] == ["g0", "h6", "h5"]
    page2 = await store.list("alice", limit=3, cursor=page1.next_cursor)
    assert [v.id for v in page2.jobs] == ["h4", "h3", "h2"]
    page3 = await store.list("alice", limit=3, cursor=page2.next_cursor)
    assert [v.id for v in page3.jobs] == ["h1", "h0"] and page3.next_cursor is None
    only_sleep = await store.list("alice", queue="sleep", limit=100)
    assert len(only_sleep.jobs) == 7
    done = await store.list("alice", status="completed")
    assert [v.id for v in done.jobs] == ["h0"]
    with pytest.raises(UnknownQueue):
        await store.list("alice", queue="nope")
    fresh = (await store.add("sleep", sleep_job())).job  # a generated id takes the one-round-trip path
    newest = await store.list("alice", limit=1)
    assert newest.jobs[0].id == fresh.id and newest.jobs[0].status == "waiting"
    assert (await store.get(fresh.id)).user_id == "alice" and await store.users.open_jobs("alice") == 8  # 6 sleep + g0 + this one


async def test_bad_payload_enqueues_nothing(make_store: Any, redis: Any, prefix: str) -> None:
    store = make_store()
    with pytest.raises(InvalidPayload):
        await store.add("generation", {"userId": "a", "prompt": "", "jobId": "bad"})
    with pytest.raises(InvalidPayload):
        await store.add("generation", {"userId": "a", "prompt": "ok"}, {"priority": 9})
    with pytest.raises(UnknownQueue):
        await store.add("painting", {"userId": "a", "prompt": "ok"})
    assert [k async for k in redis.scan_iter(match=f"{prefix}:*")] == []


async def test_retry_failed_job(make_store: Any, make_consumer: Any) -> None:
    store = make_store()
    await store.add("sleep", sleep_job(jobId="again"), {"attempts": 1})
    c = make_consumer("sleep", store)
    job = await take_one(c)
    await c.fail(job, "broken")
    assert (await store.get("again")).status == "failed"
    view = await store.retry("again")
    assert view.status == "waiting"
    job = await take_one(c)
    assert job is not None and job.id == "again"
    await complete(c, job, {"ok": 1})
    with pytest.raises(InvalidJobState):
        await store.retry("again")


async def test_take_a_batch_complete_it_and_requeue(make_store: Any, make_consumer: Any) -> None:
    """A batch for one worker: locked in one round trip in priority order, completed in one (each
    publishing its own `job:completed`, the first ones fetching a next job), and a job that never
    started put back at the head of the queue without using an attempt."""
    store = make_store()
    for i, prio in enumerate([2, 1, 2, 1, 3, 3]):
        await store.add("training", {**TRN, "loraId": f"b{i}"}, {"priority": prio, "attempts": 1})
    c = make_consumer("training", store)
    first, *more = await c.take(up_to=4)
    assert first.id == "b1"
    assert [j.id for j in more] == ["b3", "b0", "b2"]
    assert set(c.held) == {"b1", "b3", "b0", "b2"}
    # b2 never started: back at the head of its priority, attempts untouched
    assert await c.requeue(more[2])
    assert (await store.get("b2")).status == "waiting"
    assert (await store.counts("training"))["active"] == 3
    nxt, lost = await c.complete([(first, {"n": 1}), (more[0], {"n": 2}), (more[1], {"n": 3})], fetch_next=2)
    assert not lost
    assert [j.id for j in nxt] == ["b2", "b4"]
    for job_id, n in (("b1", 1), ("b3", 2), ("b0", 3)):
        view = await store.get(job_id)
        assert view.status == "completed" and view.result == {"n": n}
        evs = await events(store, job_id)
        assert_well_formed(evs)
        assert [e["type"] for e in evs].count("job:completed") == 1
    nxt2, lost2 = await c.complete([(j, {}) for j in nxt])
    assert nxt2 == [] and not lost2
    b2 = await store.get("b2")
    assert b2.status == "completed" and b2.attempts_made == 1  # one attempt: the requeue used none
    assert [j.id for j in await c.take_more(5)] == ["b5"]
    assert await c.take_more(0) == []


async def test_creation_is_one_script_under_killed_connections(redis_url: str, redis: Any, prefix: str) -> None:
    """Submits whose connections are killed at random moments, each retried with its own jobId
    until it answers: every job exists once, whole (BullMQ's job and dash-ray's record
    together), and no retry created a second one."""
    from redis.asyncio import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    from dash_ray.queues import JobStore

    client = Redis.from_url(redis_url, decode_responses=True, client_name="dash:test:victim")
    store = JobStore(client, prefix=prefix, queues=("generation",))
    stop = asyncio.Event()
    kills = 0

    async def killer() -> None:
        nonlocal kills
        while not stop.is_set():
            for line in (await redis.execute_command("CLIENT", "LIST", "TYPE", "normal")).splitlines():
                f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
                if f.get("name") == "dash:test:victim":
                    await redis.execute_command("CLIENT", "KILL", "ID", f["id"])
                    kills += 1
            await asyncio.sleep(0.003)

    task = asyncio.create_task(killer())
    created: dict[str, int] = {}
    try:
        for i in range(100):
            job_id = f"once-{i}"
            for _ in range(200):  # bounded: a submit is retried until it answers
                try:
                    res = await store.add("generation", {"userId": "a", "prompt": f"cat {i}", "jobId": job_id})
                except (RedisConnectionError, ConnectionError, OSError):
                    continue
                created[job_id] = created.get(job_id, 0) + int(res.created)
                break
    finally:
        stop.set()
        await task
        await client.aclose()
    assert kills > 0, kills
    assert len(created) == 100 and all(n <= 1 for n in created.values())
    waiting = [*await redis.lrange(f"{prefix}:generation:wait", 0, -1),
               *await redis.zrange(f"{prefix}:generation:prioritized", 0, -1)]
    assert sorted(waiting) == sorted(created)  # each job once in BullMQ's queue
    for job_id in created:
        assert await redis.exists(f"{prefix}:generation:{job_id}") == 1
        assert await redis.hget(f"{prefix}:__dash__:job:{job_id}", "status") == "waiting"


async def test_every_users_jobs_newest_first_for_admins(make_store: Any) -> None:
    store = make_store()
    made = [(await store.add("generation", {"userId": u, "prompt": f"p{i}"})).job.id
            for i, u in enumerate(["ann", "ben", "ann", "cy"])]
    page = await store.list("*", limit=3)
    assert [j.id for j in page.jobs] == made[::-1][:3] and page.next_cursor
    rest = await store.list("*", limit=3, cursor=page.next_cursor)
    assert [j.id for j in rest.jobs] == [made[0]] and rest.next_cursor is None
    assert [j.id for j in (await store.list("ann")).jobs] == [made[2], made[0]]


async def test_a_take_publishes_the_start_of_the_job_it_takes_first_and_says_if_it_was_cancelled(
        make_store: Any, make_consumer: Any) -> None:
    """TAKE (queues/lua/take.lua) publishes the `active` event of the first job it hands out,
    filled in from the template (an id that spells the template's marks stays as it is), and
    says whether a cancel came first; the jobs taken with it are left to their worker."""
    store = make_store()
    odd = "zzMARKUSERzz777000001zzMARKJOBzz"  # a client-chosen id that spells the marks
    for name in (odd, "second", "third"):
        await store.add("sleep", sleep_job(jobId=name), {"attempts": 3})
    c = make_consumer("sleep", store)
    first, second = await c.take(up_to=2)
    assert first.id == odd and first.announced and not first.stop and not second.announced
    [start] = [e for e in await events(store, odd) if e["status"] == "active"]
    assert start["jobId"] == odd and start["userId"] == "alice" and start["attempt"] == 1
    assert start["attempts"] == 3 and start["message"] == "started (attempt 1 of 3)" and start["progress"] == 0
    assert abs(start["ts"] - time.time()) < 60
    view = await store.get(odd)
    assert view.status == "active" and view.started_at and abs(view.started_at - time.time()) < 60
    assert view.message == "started (attempt 1 of 3)"  # the record's fields are filled in too
    assert [e["status"] for e in await events(store, "second")] == ["waiting"]  # its worker's to publish
    await store.cancel("third")  # waiting: removed at once
    await store.add("sleep", sleep_job(jobId="fourth"))
    [fourth] = await c.take()
    assert fourth.announced
    await store.cancel("fourth")  # running: flagged, and the worker told
    await c.fail(fourth, "cancelled", cancelled=True)
    assert (await store.get("fourth")).status == "cancelled"
    # a cancel flagged before the take (a running job's flag; here set by hand): the take says stop
    await store.add("sleep", sleep_job(jobId="fifth"))
    await store.redis.set(store.keys.cancel("fifth"), "1")
    [fifth] = await c.take()
    assert fifth.announced and fifth.stop


async def test_a_take_of_a_plain_bullmq_job_with_no_record_publishes_a_start_without_an_owner(
        make_store: Any, make_consumer: Any) -> None:
    from bullmq import Queue as BullQueue

    store = make_store()
    q = BullQueue("sleep", {"connection": store.redis, "prefix": store.keys.prefix})
    await q.add("plain", {"durationS": 0}, {"jobId": "plain-1"})
    c = make_consumer("sleep", store)
    [job] = await c.take()
    assert job.id == "plain-1" and job.announced
    [start] = await events(store, "plain-1")
    assert start["status"] == "active" and "userId" not in start and start["attempt"] == 1
    assert await store.redis.hget(store.keys.job("plain-1"), "userId") is None


async def test_a_job_retried_at_once_into_a_waiting_take_says_why_before_its_new_start(
        make_store: Any, make_consumer: Any) -> None:
    """A failed attempt with no backoff goes back to waiting, and a consumer waiting on the
    marker takes it the moment BullMQ moves it, before the `retrying` event that follows the
    move: that take does not announce the new attempt (its worker does, after the `retrying`)."""
    store = make_store()
    await store.add("sleep", sleep_job(jobId="again"), {"attempts": 3, "backoff": {"type": "fixed", "delayS": 0}})
    a, b = make_consumer("sleep", store), make_consumer("sleep", store)
    [job] = await a.take()
    parked = asyncio.create_task(b.take(block_s=20))

    async def b_waits() -> bool:
        return int((await store.redis.info("clients"))["blocked_clients"]) >= 1

    await wait_for(b_waits, 10, interval_s=0.01)
    await a.fail(job, "boom", retry=True)
    [again] = await asyncio.wait_for(parked, 10)
    assert again.id == "again" and again.attempt == 2 and not again.announced
    await asyncio.to_thread(b.worker_lifecycle.publish, [started_event(again.id, again.queue, again.user_id,
                                                                       again.attempt, again.attempts)])
    evs = await events(store, "again")
    assert [(e["status"], e.get("attempt")) for e in evs] == [
        ("waiting", None), ("active", 1), ("retrying", 2), ("active", 2)]
    assert (await store.get("again")).status == "active"


async def test_a_take_does_not_announce_a_job_whose_id_belongs_to_a_finished_record(
        make_store: Any, make_consumer: Any) -> None:
    """BullMQ forgot a finished job (its retention) while our record of it is kept; a plain
    producer reuses the id: the take does not publish a start into the finished job's record."""
    from bullmq import Queue as BullQueue

    store = make_store()
    await store.add("sleep", sleep_job(jobId="reused"))
    c = make_consumer("sleep", store)
    await complete(c, await take_one(c), {"ok": 1})
    await store.redis.delete(store.keys.bull("sleep", "reused"))  # BullMQ's removeOnComplete
    await store.redis.zrem(store.keys.bull("sleep", "completed"), "reused")
    seen = len(await events(store, "reused"))
    q = BullQueue("sleep", {"connection": store.redis, "prefix": store.keys.prefix})
    await q.add("plain", {"durationS": 0}, {"jobId": "reused"})
    [job] = await c.take()
    assert job.id == "reused" and not job.announced
    assert len(await events(store, "reused")) == seen  # nothing published into alice's job
    assert (await store.redis.hget(store.keys.job("reused"), "status")) == "completed"


async def test_two_retries_at_once_run_the_job_once_and_end_it_never(make_store: Any, make_consumer: Any) -> None:
    """An owner and an admin retry one failed job together: one requeues it, the other finds it
    requeued; no second final event, and it is among the unfinished."""
    store = make_store()
    await store.add("sleep", sleep_job(jobId="twice"), {"attempts": 1})
    c = make_consumer("sleep", store)
    await c.fail(await take_one(c), "boom", retry=False)
    assert (await store.get("twice")).status == "failed"
    views = await asyncio.gather(store.retry("twice"), store.retry("twice"), return_exceptions=True)
    # the second finds it waiting already (409), or requeued under it (its view): never an error of its own
    assert all(not isinstance(v, BaseException) or isinstance(v, InvalidJobState) for v in views), views
    assert any(not isinstance(v, BaseException) for v in views), views
    evs = await events(store, "twice")
    assert [e["type"] for e in evs].count("job:failed") == 1 and evs[-1]["status"] == "waiting"
    assert (await store.get("twice")).status == "waiting"
    assert await store.redis.sismember(store.keys.waiting_count("alice"), "twice")
    assert [j.id for j in [await take_one(c)]] == ["twice"]


async def test_an_adopted_plain_job_keeps_its_id_from_another_tenant(make_store: Any) -> None:
    """A plain BullMQ producer's job, adopted (a record with no digest): a tenant who submits its
    id to another queue is refused; the record, its owner and its events stay as they were."""
    from bullmq import Queue as BullQueue

    store = make_store()
    q = BullQueue("sleep", {"connection": store.redis, "prefix": store.keys.prefix})
    await q.add("plain", {"userId": "victim", "durationS": 0}, {"jobId": "order-7"})
    assert await store.lifecycle.adopt("order-7", "sleep", "victim", delayed=False, created_ms=int(time.time() * 1000))
    before = await events(store, "order-7")
    with pytest.raises(JobConflict):
        await store.add("generation", {"userId": "mallory", "prompt": "x", "jobId": "order-7"})
    assert (await store.get("order-7")).user_id == "victim"
    assert await events(store, "order-7") == before


async def test_a_late_waiting_again_event_does_not_revive_a_finished_job(make_store: Any, make_consumer: Any) -> None:
    store = make_store()
    await store.add("sleep", sleep_job(jobId="done-then-late"))
    c = make_consumer("sleep", store)
    await complete(c, await take_one(c), {"ok": 1})
    seen = await events(store, "done-then-late")
    assert await store.lifecycle.wait_again("done-then-late", "sleep", "alice", "recovered") == 0
    assert await events(store, "done-then-late") == seen
    assert not await store.redis.sismember(store.keys.waiting_count("alice"), "done-then-late")
    assert (await store.get("done-then-late")).status == "completed"


# ------------------------------------------------------------------ deadlines to start (options.startBy)
async def past(ms: int) -> None:
    """Wait until the clock is past `ms` (a deadline)."""
    async def over() -> bool:
        return time.time() * 1000 > ms + 5

    await wait_for(over, 10)


async def test_a_job_taken_past_its_deadline_ends_expired_unrun(make_store: Any, make_consumer: Any) -> None:
    store = make_store()
    consumer = make_consumer("sleep", store)
    made = await store.add("sleep", sleep_job(), {"startBy": 0.3})
    deadline = int(await store.redis.hget(store.keys.job(made.job.id), "startBy"))
    assert deadline == pytest.approx(made.job.created_at * 1000 + 300, abs=50)  # on Redis's clock
    late = await store.add("sleep", sleep_job())  # behind it, no deadline
    await past(deadline)
    taken = await consumer.take(block_s=0.0)
    assert [j.id for j in taken] == [late.job.id]  # the expired one was taken, ended, and the next one taken
    view = await store.get(made.job.id)
    assert view.status == "expired" and view.error.startswith("expired: not started by its deadline")
    evs = await events(store, made.job.id)
    assert [(e["type"], e["status"]) for e in evs] == [("job:progress", "waiting"), ("job:failed", "expired")]
    assert_well_formed(evs)
    assert await consumer.queue.getJobState(made.job.id) == "failed"
    # The sweep leaves it (its deadline's entry is not what it was made for any more): it can be retried.
    assert await consumer.expire_overdue() == 0 and await consumer.queue.getJobState(made.job.id) == "failed"
    # Retried, it runs with no deadline.
    again = await store.retry(made.job.id)
    assert again.status == "waiting"
    assert await store.redis.hget(store.keys.job(made.job.id), "startBy") is None
    (job,) = await consumer.take(block_s=1.0)
    assert job.id == made.job.id and job.start_by_ms is None and job.announced


async def test_the_sweep_ends_waiting_and_delayed_jobs_past_their_deadline(make_store: Any, make_consumer: Any) -> None:
    store = make_store()
    consumer = make_consumer("sleep", store)
    waiting = await store.add("sleep", sleep_job(), {"startBy": 0.2})
    delayed = await store.add("sleep", sleep_job(), {"delayS": 5, "startBy": 5.2})
    other = await store.add("sleep", sleep_job(), {"startBy": 60})
    assert await consumer.expire_overdue() == 0
    await past(int(await store.redis.hget(store.keys.job(waiting.job.id), "startBy")))
    assert await consumer.expire_overdue() == 1
    view = await store.get(waiting.job.id)
    assert view.status == "expired" and "not started by its deadline" in (view.error or "")
    assert await consumer.queue.getJobState(waiting.job.id) == "unknown"  # out of BullMQ, never run
    assert (await store.get(delayed.job.id)).status == "delayed" and (await store.get(other.job.id)).status == "waiting"
    # The delayed one: its deadline 0.2 s after its delay ends; swept before anything takes it.
    await store.redis.hset(store.keys.job(delayed.job.id), "startBy", 1)  # (its deadline, brought forward)
    await store.redis.zadd(store.keys.start_by("sleep"), {delayed.job.id: 1})
    assert await consumer.expire_overdue() == 1
    assert (await store.get(delayed.job.id)).status == "expired"
    assert await consumer.expire_overdue() == 0
    assert await store.redis.zrange(store.keys.start_by("sleep"), 0, -1) == [other.job.id]
    # An entry that is not what it was made for is dropped, its job left alone: another deadline than
    # the record's (a reused id), an id with no record (none is made for it), a job of another queue.
    plain = await store.add("sleep", sleep_job())
    await store.redis.zadd(store.keys.start_by("sleep"), {plain.job.id: 1, "gone-id": 1, other.job.id: 1})
    await store.redis.zadd(store.keys.start_by("generation"), {other.job.id: 1})
    assert await consumer.expire_overdue() == 0
    assert await make_consumer("generation", store).expire_overdue() == 0
    assert (await store.get(plain.job.id)).status == "waiting" and (await store.get(other.job.id)).status == "waiting"
    assert not await store.redis.exists(store.keys.job("gone-id"))


async def test_a_job_started_in_time_is_not_expired_and_its_retry_is_not_held_to_the_deadline(
        make_store: Any, make_consumer: Any) -> None:
    store = make_store()
    consumer = make_consumer("sleep", store)
    made = await store.add("sleep", sleep_job(), {"startBy": 0.5, "backoff": {"type": "fixed", "delayS": 0}})
    (job,) = await consumer.take(block_s=1.0)
    assert job.announced  # started in time
    await past(job.start_by_ms)
    assert await consumer.expire_overdue() == 0  # running: the sweep leaves it
    assert await consumer.requeue(job)  # put back after it started (a preemption, a shutdown): no attempt used
    (again,) = await consumer.take(block_s=1.0)
    assert again.id == made.job.id and again.attempts_made == 0  # past its deadline, but it started in time
    job = again
    assert (await consumer.fail(job, "boom")).status == "retrying"
    (retry,) = await consumer.take(block_s=2.0)  # its second attempt, past the deadline: it runs
    assert retry.id == made.job.id and retry.attempts_made == 1
    await complete(consumer, retry, {"ok": True})
    assert (await store.get(made.job.id)).status == "completed"
    assert await consumer.expire_overdue() == 0


async def test_a_deadline_that_cannot_be_met_is_refused_and_a_queue_default_applies(
        make_store: Any, redis: Any, prefix: str) -> None:
    store = make_store()
    with pytest.raises(InvalidPayload, match="startBy"):
        await store.add("sleep", sleep_job(), {"startBy": "2020-01-01T00:00:00Z"})  # past
    with pytest.raises(InvalidPayload, match="startBy"):
        await store.add("sleep", sleep_job(), {"startBy": 5, "delayS": 5})  # within its delay
    with pytest.raises(InvalidPayload, match="startBy"):
        await store.add("sleep", sleep_job(), {"startBy": -1})
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    made = await store.add("sleep", sleep_job(), {"startBy": when})
    assert int(await redis.hget(store.keys.job(made.job.id), "startBy")) // 1000 == \
        int(time.mktime(time.strptime(when, "%Y-%m-%dT%H:%M:%SZ"))) - time.timezone
    from dash_ray.queues import JobStore

    defaulted = JobStore(redis, prefix=prefix, queues=("sleep",), start_by_s={"sleep": 30})
    made = await defaulted.add("sleep", sleep_job())
    assert int(await redis.hget(store.keys.job(made.job.id), "startBy")) == pytest.approx(
        made.job.created_at * 1000 + 30_000, abs=50)  # counted on Redis's clock, at the create
    assert await redis.zscore(store.keys.start_by("sleep"), made.job.id) is not None
