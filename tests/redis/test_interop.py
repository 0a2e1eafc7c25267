"""BullMQ interop both ways: plain BullMQ sees our jobs; we consume jobs added by plain BullMQ."""

from __future__ import annotations

import asyncio
from typing import Any

from bullmq import Job, Queue, Worker

from tests.helpers import complete, take_one


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
    job = await take_one(consumer)
    assert job is not None and job.id == "theirs" and job.data["prompt"] == "from node"
    await complete(consumer, job, {"ok": True})
    view = await store.get("theirs")
    assert view.status == "completed" and view.user_id == "node-user" and view.result == {"ok": True}
