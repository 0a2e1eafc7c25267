"""Job events through the lifecycle: ordered seq, latest state, replay after a seq, pub/sub fan-out."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from dash_ray.models import JobCompletedEvent, JobProgressEvent
from dash_ray.models.events import Frame
from dash_ray.queues import EventHub
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
    assert [Frame(e).seq for e in missed] == [5, 6, 7]
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


async def test_seq_never_repeats_after_redis_restarts_from_an_older_state(
        make_store: Any, make_consumer: Any, redis: Any) -> None:
    """A Redis that restarts from an append-only file missing its last second of writes hands
    out seqs clients may have seen already, unless seqs jump at a restart: a new server start
    (LASTSAVE, moved here by a SAVE) makes the next seq jump past anything that could be lost."""
    store = make_store()
    c = make_consumer("sleep", store)
    await store.add("sleep", {"userId": "alice", "jobId": "boot1"})
    await take_one(c)  # seq 1 waiting, 2 active
    await asyncio.to_thread(c.worker_lifecycle.publish, [progress("boot1", 10)])
    before = await redis.lastsave()
    while await redis.lastsave() == before:  # LASTSAVE counts seconds
        await asyncio.sleep(0.2)
        await redis.save()
    await asyncio.to_thread(c.worker_lifecycle.publish, [progress("boot1", 20), progress("boot1", 30)])
    seqs = [json.loads(e)["seq"] for e in await store.bus.replay("boot1")]
    assert seqs[:3] == [1, 2, 3] and seqs[3] > 3 + 500 and seqs[4] == seqs[3] + 1
