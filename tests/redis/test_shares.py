"""GPU shares on a real Redis, with a real consumer's takes (queues/shares.py): a group's members
together hold at most the group's share; a job taken past it waits (parked) and says why, and is
taken once a member's job gives its share back; a share left counted by a consumer that died
is given back once its job's lock is gone; a parked job cancelled is simply gone."""

from __future__ import annotations

from typing import Any

from dash_ray.queues import Keys
from dash_ray.queues.ledger import Budget, Budgets
from dash_ray.queues.shares import GpuShares


async def test_a_groups_share_parks_a_members_job_until_one_ends(make_store: Any, make_consumer: Any, redis: Any,
                                                                  prefix: str) -> None:
    keys = Keys(prefix)
    store = make_store()
    budgets = Budgets(redis, keys, org_default=Budget(share=1.0))  # a group: 1 GPU at once, 2 jobs of 0.5
    for user in ("alice", "bob"):
        await budgets.join(user, "acme")
    c = make_consumer("sleep", store)
    c.shares = GpuShares(redis, keys, "sleep", keys.bull("sleep", ""), 0.5, budgets, store.lifecycle)
    made = {u: (await store.add("sleep", {"userId": u, "durationS": 1})).job.id for u in ("alice", "bob", "carol")}
    a2 = (await store.add("sleep", {"userId": "alice", "durationS": 1})).job.id
    a1, b1, c1 = made["alice"], made["bob"], made["carol"]
    taken = await c.take(up_to=4)
    assert {j.id for j in taken} == {a1, b1, c1}  # alice's second would take acme past its share
    assert a2 not in c.held
    view = await store.get(a2)
    assert view.status == "waiting" and "your group acme's GPU share is in use" in (view.message or ""), view
    assert await redis.hgetall(keys.gpu_holding) == {"alice": "500", "bob": "500", "org:acme": "1000", "carol": "500"}
    assert await store.counts("sleep") == {**await store.counts("sleep"), "active": 3}
    # a third of alice's, taken later, waits too; cancelled while it waits, it is gone
    a3 = (await store.add("sleep", {"userId": "alice", "durationS": 1})).job.id
    assert await c.take() == [] and (await store.get(a3)).status == "waiting"
    assert (await store.cancel(a3)).status == "cancelled"
    # the consumer of a1 died: its lock runs out, and the next settle gives its share back
    by_id = {j.id: j for j in taken}
    await redis.delete(keys.bull_lock("sleep", a1))
    c.held.pop(a1)
    c.shares._settled = 0.0
    await c.shares.settle()
    assert await redis.hget(keys.gpu_holding, "org:acme") == "500"
    [again] = await c.take()
    assert again.id == a2  # put back at the front by the release, and it fits now
    assert await redis.hget(keys.gpu_holding, "org:acme") == "1000"
    nxt, lost = await c.complete([(by_id[b1], {"ok": 1}), (by_id[c1], {"ok": 1}), (again, {"ok": 1})])
    assert not lost and nxt == []
    assert await redis.hgetall(keys.gpu_holding) == {} and await redis.hgetall(keys.gpu_held("sleep")) == {}
    assert await redis.zcard(keys.parked("org:acme")) == 0
    assert (await store.get(a3)).status == "cancelled"


async def test_no_cap_anywhere_counts_nothing(make_store: Any, make_consumer: Any, redis: Any, prefix: str) -> None:
    keys = Keys(prefix)
    store = make_store()
    c = make_consumer("sleep", store)
    c.shares = GpuShares(redis, keys, "sleep", keys.bull("sleep", ""), 0.5, Budgets(redis, keys), store.lifecycle)
    ids = [(await store.add("sleep", {"userId": "alice", "durationS": 1})).job.id for _ in range(3)]
    assert [j.id for j in await c.take(up_to=3)] == ids
    assert await redis.exists(keys.gpu_holding, keys.gpu_held("sleep")) == 0
