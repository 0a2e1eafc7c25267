"""GPU shares on the real scheduler (local Ray, logical GPUs, the sleep runner: 0.2 GPU a job):
a user's running jobs hold at most their share at once, another user's jobs are not held back
by theirs, and every share is given back when the jobs end."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from dash_ray.queues import Keys
from dash_ray.queues.ledger import Budget, Budgets
from tests.helpers import all_done, events

pytestmark = pytest.mark.once  # scheduling on Ray: the same on any Redis server


async def runs(store: Any, job_id: str) -> tuple[float, float]:
    """(start, end) of the attempt that completed the job: its last start to its end."""
    evs = await events(store, job_id)
    start = max(e["ts"] for e in evs if e["type"] == "job:progress" and e["status"] == "active"
                and e.get("message", "").startswith("started"))
    end = next(e["ts"] for e in evs if e["type"] == "job:completed")
    return start, end


def most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    return max(itertools.accumulate(d for _, d in edges))


async def test_a_users_running_jobs_hold_at_most_their_gpu_share(make_scheduler: Any, make_store: Any,
                                                                 redis: Any, prefix: str) -> None:
    """DASH_GPU_SHARE_PER_USER=0.4: two sleep jobs of a user at once (0.2 GPU each), while the five
    workers run others' too; a user with a budget of their own (gpuShare 0.2) runs one at a time;
    a waiting job says why it waits; nothing is held once all have ended."""
    keys = Keys(prefix)
    await Budgets(redis, keys).set("solo", Budget(share=0.2))
    make_scheduler(gpu_share_per_user=0.4, max_pending_workers=5, worker_idle_s=600, sleep_max_workers=5)
    store = make_store()
    ids: dict[str, list[str]] = {"a": [], "b": [], "solo": []}
    for _ in range(6):
        for user in ids:
            ids[user].append((await store.add("sleep", {"userId": user, "durationS": 0.4})).job.id)
    everyone = [i for mine in ids.values() for i in mine]
    views = await all_done(store, everyone, 180)
    assert {v.status for v in views} == {"completed"}, [(v.id, v.status, v.error) for v in views]
    spans = {user: [await runs(store, i) for i in mine] for user, mine in ids.items()}
    assert most_at_once(spans["a"]) <= 2 and most_at_once(spans["b"]) <= 2, spans
    assert most_at_once(spans["solo"]) == 1, spans["solo"]
    assert most_at_once([s for mine in spans.values() for s in mine]) >= 4  # others ran beside them
    told = [e.get("message", "") for i in everyone for e in await events(store, i)]
    assert any("GPU share is in use" in m for m in told)  # a job that waited for its share said so
    assert await redis.hgetall(keys.gpu_holding) == {}  # every share given back
    assert await redis.hgetall(keys.gpu_held("sleep")) == {}
    for user in ids:
        assert await redis.zcard(keys.parked(user)) == 0
