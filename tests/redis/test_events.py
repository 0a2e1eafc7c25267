"""Job events through the lifecycle: ordered seq, latest state, replay after a seq, pub/sub fan-out."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from dash_ray.models import JobCompletedEvent, JobProgressEvent
from dash_ray.queues import EventHub, frame_seq
from tests.helpers import complete, take_one


def progress(job_id: str, i: int) -> JobProgressEvent:
    return JobProgressEvent(job_id=job_id, queue="sleep", status="active", progress=i, message=f"step {i}",
                            user_id="alice")


async def test_seq_replay_and_latest(make_store: Any, make_consumer: Any) -> None:
    store = make_store()
    bus = store.bus
    c = make_consumer("sleep", store)
    await store.add("sleep", {"userId": "alice", "jobId": "e1"})
    job = await take_one(c)  # waiting (1), active (2)
    await asyncio.to_thread(c.worker_lifecycle.publish, [progress("e1", i * 25) for i in range(1, 5)])
    await complete(c, job, {"n": 5})
    events = [json.loads(e) for e in await bus.replay("e1")]
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6, 7]
    assert events[0]["status"] == "waiting" and events[1]["status"] == "active"
    assert events[-1]["type"] == "job:completed"
    missed = await bus.replay("e1", after_seq=4)
    assert [frame_seq(e) for e in missed] == [5, 6, 7]
    latest = await bus.latest("e1")
    assert isinstance(latest, JobCompletedEvent) and latest.seq == 7 and latest.result == {"n": 5}
    assert await bus.latest("missing") is None


async def test_hub_delivers_live_events_in_order(make_store: Any, make_consumer: Any, redis_url: str) -> None:
    store = make_store()
    c = make_consumer("sleep", store)
    hub = EventHub(redis_url)
    await hub.start()
    got: list[dict[str, Any]] = []
    done = asyncio.Event()

    def listener(_channel: str, data: str) -> None:
        got.append(json.loads(data))
        if got[-1]["type"] == "job:completed":
            done.set()

    try:
        await hub.add(store.keys.channel("live"), listener)
        await store.add("sleep", {"userId": "alice", "jobId": "live"})
        job = await take_one(c)
        for i in range(0, 50, 10):  # several round trips of several events each
            await asyncio.to_thread(c.worker_lifecycle.publish, [progress("live", j) for j in range(i, i + 10)])
        await complete(c, job, None)
        await asyncio.wait_for(done.wait(), 5)
    finally:
        await hub.close()
    seqs = [e["seq"] for e in got]
    assert seqs == list(range(1, 54))
