"""A queue added through the plug-in contract alone runs jobs end to end.

`echo` is defined in tests/plugin_queue.py (its payload model, its runner, its `QueueDef`) and
registered by one line in tests/conftest.py; nothing in dash_ray names it. Here it gets its
settings, its Ray resource on the session's node, a consumer and workers running its own
runner, its cost rule applied in the consumer's process and its runner's hooks read by the
worker, like a built-in queue.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dash_ray.config import load_settings
from dash_ray.errors import InvalidPayload
from dash_ray.queues import Keys
from tests.helpers import assert_well_formed, events, wait_for, wait_status


@pytest.fixture
def echo_scheduler(ray_session: dict[str, Any], redis_url: str, prefix: str) -> Any:
    """A Scheduler serving only the plug-in queue, with its own runner, on the test's prefix."""
    from dash_ray.scheduler import queue_specs
    from dash_ray.scheduler.cluster import Scheduler

    assert ray_session.get("dash_echo") == 2.0  # the session's node offers the plug-in queue's slots
    settings = load_settings(key_prefix=prefix, enable_sleep_queue=True)
    sched = Scheduler(settings, redis_url, [s for s in queue_specs(settings) if s.name == "echo"])
    sched.start()
    yield sched
    sched.stop(drain_timeout_s=2)


async def test_a_queue_added_by_its_definition_alone_runs_jobs_end_to_end(echo_scheduler: Any, make_store: Any,
                                                                           redis: Any, prefix: str) -> None:
    store = make_store(queues=("echo",))
    with pytest.raises(InvalidPayload, match="text"):  # its payload model validates submissions
        await store.add("echo", {"userId": "alice", "text": ""})
    first = (await store.add("echo", {"userId": "alice", "text": "hi", "repeat": 3, "model": "m1"})).job.id
    second = (await store.add("echo", {"userId": "bob", "text": "yo", "model": "m1"})).job.id
    done = await wait_status(store, first, ("completed", "failed"), timeout_s=90)
    assert done.status == "completed", done.error
    assert done.result["echo"] == "hi hi hi"
    assert (await wait_status(store, second, ("completed",), timeout_s=30)).result["echo"] == "yo"

    evs = await events(store, first)
    assert_well_formed(evs)
    steps = [e["step"] for e in evs if e["type"] == "job:progress" and e.get("step")]
    assert steps == [1, 2, 3]
    assert any(e["type"] == "job:log" and "echoed 3" in e["message"] for e in evs)

    # The consumer (another process, given the definition) sized jobs by the queue's own cost
    # rule: one shape, "echo" (a queue without a rule cannot be defined).
    keys = Keys(prefix)

    async def measured() -> Any:
        costs = await redis.hgetall(keys.costs("echo"))
        return costs or None

    costs = await wait_for(measured, 15)
    assert {k.decode() if isinstance(k, bytes) else k for k in costs} <= {"echo", "*"}
    assert "echo" in {k.decode() if isinstance(k, bytes) else k for k in costs}

    # The worker read the runner's `loaded_models` hook (model affinity sees what it holds).
    stats = await asyncio.to_thread(echo_scheduler.stats)
    assert any("m1" in w["models"] for w in stats["echo"]["worker_detail"]), stats["echo"]["worker_detail"]
