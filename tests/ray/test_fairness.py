"""Fair share on the real scheduler (local Ray, the sleep runner): one user's backlog does not
make another wait behind all of it, and weights share the workers 2:1."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import pytest

from tests.helpers import all_done, events, intervals

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
