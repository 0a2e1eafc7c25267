"""Event bus: ordered seq, latest state, replay after a seq, pub/sub fan-out."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from dash_ray.models import JobCompletedEvent, JobProgressEvent
from dash_ray.queues import EventHub


async def test_seq_replay_and_latest(make_store: Any) -> None:
    store = make_store()
    bus = store.bus
    await store.add("sleep", {"userId": "alice", "jobId": "e1"})
    for i in range(1, 6):
        await bus.publish(JobProgressEvent(job_id="e1", queue="sleep", status="active", progress=i * 20,
                                           message=f"step {i}/5", user_id="alice"))
    await bus.publish(JobCompletedEvent(job_id="e1", queue="sleep", result={"n": 5}, user_id="alice"))
    events = [json.loads(e) for e in await bus.replay("e1")]
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6, 7]
    assert events[0]["status"] == "waiting" and events[-1]["type"] == "job:completed"
    missed = [json.loads(e) for e in await bus.replay("e1", after_seq=4)]
    assert [e["seq"] for e in missed] == [5, 6, 7]
    latest = await bus.latest("e1")
    assert isinstance(latest, JobCompletedEvent) and latest.seq == 7 and latest.result == {"n": 5}
    assert await bus.latest("missing") is None


async def test_hub_delivers_live_events_in_order(make_store: Any, redis_url: str) -> None:
    store = make_store()
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
        for i in range(50):
            await store.bus.publish(JobProgressEvent(job_id="live", queue="sleep", status="active", progress=i))
        await store.bus.publish(JobCompletedEvent(job_id="live", queue="sleep", result=None))
        await asyncio.wait_for(done.wait(), 5)
    finally:
        await hub.close()
    seqs = [e["seq"] for e in got]
    assert seqs == list(range(1, 53))
