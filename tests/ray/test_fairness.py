"""Fair share on the real scheduler (local Ray, the sleep runner): one user's backlog does not
make another wait behind all of it, and weights share the workers 2:1."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import pytest

from tests.helpers import all_done, events, intervals, wait_for

pytestmark = pytest.mark.once  # scheduling on Ray: the same on any Redis server


async def started(store: Any, ids: list[str]) -> dict[str, float]:
    return {i: intervals(await events(store, i))[0][0] for i in ids}


async def test_a_light_user_does_not_wait_behind_a_heavy_users_backlog(make_scheduler: Any, make_store: Any) -> None:
    make_scheduler(max_pending_workers=5, worker_idle_s=600)
    store = make_store()
    heavy = [(await store.add("sleep", {"userId": "a", "durationS": 0.02})).job.id for _ in range(200)]
    light = [(await store.add("sleep", {"userId": "b", "durationS": 0.02})).job.id for _ in range(10)]
    await all_done(store, heavy + light, 120)
    at = await started(store, heavy + light)
    order = sorted(heavy + light, key=at.__getitem__)
    first_light = order.index(light[0])
    a_after = [i for i in order[first_light:] if i in heavy]
    assert max(at[i] for i in light) < at[a_after[29]], "b's jobs waited behind a's backlog"
    a_starts = [at[i] for i in heavy]
    assert sum(x > y + 0.05 for x, y in itertools.pairwise(a_starts)) == 0  # FIFO within a (batches start together)


async def test_weights_two_to_one_share_the_started_jobs(make_scheduler: Any, make_store: Any) -> None:
    make_scheduler(max_pending_workers=5, worker_idle_s=600)
    store = make_store()
    ids = []
    for _ in range(120):
        ids.append((await store.add("sleep", {"userId": "two", "durationS": 0.02}, weight=2.0)).job.id)
        ids.append((await store.add("sleep", {"userId": "one", "durationS": 0.02})).job.id)
    await all_done(store, ids, 120)
    at = await started(store, ids)
    owner = {i: (await store.get(i)).user_id for i in ids}
    first = sorted(ids, key=at.__getitem__)[:150]  # while both still have jobs waiting
    share = Counter(owner[i] for i in first)
    assert abs(share["two"] / share["one"] - 2.0) <= 0.2, share


async def _active(store: Any, job_id: str) -> bool:
    return bool((await store.get(job_id)).status == "active")


async def test_with_a_memory_a_user_back_from_a_burst_starts_after_a_newcomer(make_scheduler: Any,
                                                                             make_store: Any) -> None:
    """DASH_FAIR_HALF_LIFE_S=60: the work a user was served lately delays their next job behind a
    newcomer's, though their backlog drained; with 0 (no memory) they come in the order they came."""
    make_scheduler(fair_half_life_s=60, max_pending_workers=1, worker_idle_s=600, sleep_max_workers=1)
    store = make_store(fair_half_life_s=60)
    burst = [(await store.add("sleep", {"userId": "burst", "durationS": 0.2})).job.id for _ in range(5)]
    await all_done(store, burst, 60)
    await wait_for(lambda: store.redis.hget(store.keys.fair_usage("sleep"), "burst"), 30)  # charged
    order = {}
    for remembers in (True, False):
        s = store if remembers else make_store(fair_half_life_s=0)
        blocker = (await s.add("sleep", {"userId": "c", "durationS": 0.5})).job.id
        await wait_for(lambda b=blocker, s=s: _active(s, b), 30)  # the one worker is busy: the others wait
        back = (await s.add("sleep", {"userId": "burst", "durationS": 0.05})).job.id
        new = (await s.add("sleep", {"userId": f"new-{remembers}", "durationS": 0.05})).job.id
        await all_done(s, [blocker, back, new], 60)
        at = await started(s, [back, new])
        order[remembers] = sorted((back, new), key=at.__getitem__) == [new, back]
    assert order == {True: True, False: False}, order  # remembered: the newcomer first; forgotten: in order


async def test_an_aged_priority_3_job_starts_before_newer_priority_2_jobs(make_scheduler: Any,
                                                                         make_store: Any) -> None:
    """DASH_AGING_AFTER_S=1: a priority-3 job waiting behind newer priority-2 work moves to the front
    of priority 2 once it has waited that long, so it starts before them."""
    make_scheduler(aging_after_s=1, max_pending_workers=1, worker_idle_s=600, sleep_max_workers=1)
    store = make_store()
    blocker = (await store.add("sleep", {"userId": "c", "durationS": 3})).job.id
    await wait_for(lambda: _active(store, blocker), 30)
    old = (await store.add("sleep", {"userId": "x", "durationS": 0.05}, {"priority": 3})).job.id
    newer = [(await store.add("sleep", {"userId": "y", "durationS": 0.05}, {"priority": 2})).job.id for _ in range(3)]
    assert (await store.get(old)).queue_position == 4  # behind the three, for now
    await wait_for(lambda: _priority_2(store, old), 10)
    assert (await store.get(old)).queue_position == 1
    await all_done(store, [blocker, old, *newer], 60)
    at = await started(store, [old, *newer])
    assert at[old] < min(at[j] for j in newer), at


async def _priority_2(store: Any, job_id: str) -> bool:
    return bool((await store.get(job_id)).priority == 2)
