"""BullMQ interop both ways: plain BullMQ sees our jobs; we consume jobs added by plain BullMQ."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from bullmq import Job, Queue, Worker

from tests.helpers import complete, events, take_one
from tests.redis.test_gateway import run_one

ROOT = Path(__file__).resolve().parents[2]


async def test_plain_bullmq_sees_and_processes_our_jobs(make_store: Any, redis_url: str, prefix: str) -> None:
    store = make_store()
    await store.add("generation", {"userId": "alice", "prompt": "a cat", "jobId": "ours"}, {"priority": 1})
    queue = Queue("generation", {"connection": redis_url, "prefix": prefix})
    try:
        job = await Job.fromId(queue, "ours")
        assert job is not None and job.data["prompt"] == "a cat" and job.priority == 1
        assert await job.getState() == "prioritized"
        counts = await queue.getJobCounts("prioritized")
        assert counts["prioritized"] == 1
        seen: list[str] = []
        done = asyncio.Event()

        async def process(job: Any, token: str) -> dict[str, str]:
            seen.append(job.id)
            done.set()
            return {"by": "bullmq"}

        worker = Worker("generation", process, {"connection": redis_url, "prefix": prefix})
        await asyncio.wait_for(done.wait(), 10)
        await worker.close()
        assert seen == ["ours"]
        await asyncio.sleep(0.05)
        assert await (await Job.fromId(queue, "ours")).getState() == "completed"  # type: ignore[union-attr]
    finally:
        await queue.close()


async def test_we_consume_jobs_added_by_plain_bullmq(make_store: Any, make_consumer: Any, redis_url: str, prefix: str) -> None:
    store = make_store()
    queue = Queue("generation", {"connection": redis_url, "prefix": prefix})
    try:
        added = await queue.add("generate", {"userId": "node-user", "prompt": "from node"}, {"jobId": "theirs"})
        assert added.id == "theirs"
    finally:
        await queue.close()
    assert (await store.get("theirs")).status == "waiting"
    consumer = make_consumer("generation", store)
    ours = (await store.add("generation", {"userId": "node-user", "prompt": "from us"})).job.id
    assert await consumer.adoption.adopt() == 1  # theirs (ours has its record), found by BullMQ's `added` event
    assert await consumer.adoption.adopt() == 0  # once
    listed = (await store.list("node-user")).jobs
    assert [j.id for j in listed] == ["theirs", ours]  # in its user's history (newest first: found after ours)
    assert "theirs" in [j.id for j in (await store.list("*")).jobs]  # and the admins' list
    [waiting] = await events(store, "theirs")
    assert waiting["status"] == "waiting" and waiting["seq"] == 1 and waiting["queuePosition"] == 1
    job = await take_one(consumer)
    assert job is not None and job.id == "theirs" and job.data["prompt"] == "from node"
    await complete(consumer, job, {"ok": True})
    view = await store.get("theirs")
    assert view.status == "completed" and view.user_id == "node-user" and view.result == {"ok": True}


@pytest.mark.parametrize("raw", ["_system", "bob smith", 42])
async def test_a_plain_jobs_user_id_that_no_token_can_have_gives_it_no_owner_ever(
        raw: Any, make_store: Any, make_consumer: Any, redis_url: str, prefix: str) -> None:
    """Adoption and the run agree on the user-id rule: a plain BullMQ job whose `userId` no token
    could carry (42 would become the tenant "42"'s job) stays ownerless through its whole life,
    and leaves no unfinished-job entry behind."""
    store = make_store()
    queue = Queue("generation", {"connection": redis_url, "prefix": prefix})
    try:
        await queue.add("generate", {"userId": raw, "prompt": "from node"}, {"jobId": f"odd{abs(hash(raw)) % 1000}"})
    finally:
        await queue.close()
    consumer = make_consumer("generation", store)
    assert await consumer.adoption.adopt() == 1
    job = await take_one(consumer)
    assert job is not None and job.user_id is None
    await complete(consumer, job, {"ok": True})
    view = await store.get(job.id)
    assert view.status == "completed" and view.user_id is None
    assert [e.get("userId") for e in await events(store, job.id)] == [None, None, None]
    assert await store.redis.scard(store.keys.waiting_count("_")) == 0  # nothing left in any open set
    assert await store.redis.scard(store.keys.waiting_count(str(raw))) == 0


async def test_bullmq_tools_see_progress_logs_and_real_stack_traces(make_store: Any, make_consumer: Any,
                                                                     redis: Any, redis_url: str, prefix: str) -> None:
    """What bull-board and `QueueEvents` read: the job's `progress`, a `progress` event in the
    queue's events stream, the job log, and a stack trace that is the worker's (or none)."""
    from dash_ray.models import JobLogEvent, JobProgressEvent

    store = make_store()
    consumer = make_consumer("generation", store)
    await store.add("generation", {"userId": "alice", "prompt": "a cat", "jobId": "seen"})
    job = await take_one(consumer)
    publish = consumer.worker_lifecycle.publish
    await asyncio.to_thread(publish, [
        JobProgressEvent(job_id="seen", queue="generation", user_id="alice", status="active", progress=40,
                         message="step 2/5"),
        JobLogEvent(job_id="seen", queue="generation", user_id="alice", message="model tiny warm"),
    ], [job.token, job.token])
    queue = Queue("generation", {"connection": redis_url, "prefix": prefix})
    try:
        bull = await Job.fromId(queue, "seen")
        assert bull.progress == 40 and await bull.getState() == "active"
        assert (await store.get("seen")).progress == 40  # the same as GET /v1/jobs/{id}
        logs = await queue.getJobLogs("seen")
        assert logs["count"] == 1 and logs["logs"][0].endswith("INFO model tiny warm")
        entries = await redis.xrange(f"{prefix}:generation:events")
        progress = [dict(f) for _id, f in entries if f.get("event") == "progress"]
        assert progress and progress[-1]["jobId"] == "seen" and progress[-1]["data"] == "40"

        trace = 'Traceback (most recent call last):\n  File "runner.py", line 1\nRuntimeError: boom\n'
        await consumer.fail(job, "boom", retry=False, trace=trace)
        assert (await Job.fromId(queue, "seen")).stacktrace == [trace]
        await store.add("generation", {"userId": "alice", "prompt": "a dog", "jobId": "stopped"})
        second = await take_one(consumer)
        await consumer.fail(second, "cancelled", cancelled=True)
        assert (await Job.fromId(queue, "stopped")).stacktrace == []  # not "NoneType: None"
    finally:
        await queue.close()


def test_node_bullmq_queue_events_see_a_dash_ray_jobs_progress(make_client: Any, tokens: Any, redis_url: str,
                                                               prefix: str) -> None:
    """Node BullMQ itself (npm `bullmq`): a `QueueEvents` listener gets the progress of a job run
    by dash-ray, and `Job.getState()` / `job.progress` agree with `GET /v1/jobs/{id}`."""
    script = ROOT / "clients/js/interop/queue-events.mjs"
    if not (ROOT / "clients/js/node_modules/bullmq").exists() or not shutil.which("node"):
        if os.environ.get("DASH_REQUIRE_BROWSER"):
            pytest.fail("Node BullMQ is not installed: npm ci --prefix clients/js")
        pytest.skip("Node BullMQ is not installed: npm ci --prefix clients/js (.ci/run does)")
    client = make_client()
    h = {"Authorization": f"Bearer {tokens('node-user')}"}
    job_id = client.post("/v1/jobs/generation", json={"prompt": "a fox"}, headers=h).json()["id"]
    node = subprocess.Popen(["node", str(script), redis_url, prefix, "generation", job_id, "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert node.stdout is not None
        assert node.stdout.readline().strip() == "ready", node.stderr.read() if node.stderr else ""
        run_one(redis_url, prefix, "generation", steps=4, result={"images": ["a.png"]})
        out = json.loads(node.stdout.readline())
    finally:
        if node.poll() is None:
            node.kill()
        node.wait(10)
    view = client.get(f"/v1/jobs/{job_id}", headers=h).json()
    assert "error" not in out, out
    assert out["progressEvents"] == [0, 25, 50, 75, 100]  # the start, then each step, as BullMQ numbers
    assert out["state"] == view["status"] == "completed"
    assert out["jobProgress"] == view["progress"] == 100
    assert out["returnvalue"] == view["result"] == {"images": ["a.png"]}


def test_a_node_flow_producer_flow_across_two_dash_ray_queues_runs_child_then_parent(
        make_client: Any, tokens: Any, redis_url: str, prefix: str) -> None:
    """Node BullMQ's FlowProducer: a parent on the sleep queue and its child on generation. The
    parent waits (BullMQ's `waiting-children`) while the child runs on dash-ray's generation
    consumer; the child's completion releases it, and dash-ray's sleep consumer runs it, with the
    child's result among its children's values (BullMQ's `processed`)."""
    script = ROOT / "clients/js/interop/flow.mjs"
    if not (ROOT / "clients/js/node_modules/bullmq").exists() or not shutil.which("node"):
        if os.environ.get("DASH_REQUIRE_BROWSER"):
            pytest.fail("Node BullMQ is not installed: npm ci --prefix clients/js")
        pytest.skip("Node BullMQ is not installed: npm ci --prefix clients/js (.ci/run does)")
    client = make_client(enable_sleep_queue=True)
    h = {"Authorization": f"Bearer {tokens('node-user')}"}
    out = subprocess.run(["node", str(script), redis_url, prefix, "sleep",
                          json.dumps({"userId": "node-user", "durationS": 0.01}), "generation",
                          json.dumps({"userId": "node-user", "prompt": "a child"})],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    ids = json.loads(out.stdout)
    parent, child = ids["parent"], ids["child"]
    assert client.get(f"/v1/jobs/{parent}", headers=h).json()["status"] == "waiting"

    async def take_from(queue: str, block_s: float) -> list[str]:
        from dash_ray.queues import JobStore, QueueConsumer, connect

        r, b = connect(redis_url), connect(redis_url, blocking=True)
        try:
            c = QueueConsumer(r, b, queue, JobStore(r, prefix=prefix, queues=(queue,)).lifecycle, prefix=prefix)
            jobs = await c.take(block_s=block_s)
            for job in jobs:
                await complete(c, job, {"ran": queue})
            return [j.id for j in jobs]
        finally:
            await r.aclose()
            await b.aclose()

    assert asyncio.run(take_from("sleep", 0.5)) == []  # the parent is not ready while its child runs
    assert asyncio.run(take_from("generation", 5)) == [child]
    assert asyncio.run(take_from("sleep", 5)) == [parent]
    for job_id, ran in ((child, "generation"), (parent, "sleep")):
        view = client.get(f"/v1/jobs/{job_id}", headers=h).json()
        assert view["status"] == "completed" and view["result"] == {"ran": ran}, view
