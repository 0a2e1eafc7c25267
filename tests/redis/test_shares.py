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
    group = {"alice": "acme", "bob": "acme", "carol": None}  # what their tokens say (the jobs carry it)
    c = make_consumer("sleep", store)
    c.shares = GpuShares(redis, keys, "sleep", keys.bull("sleep", ""), 0.5, budgets, store.lifecycle)
    made = {u: (await store.add("sleep", {"userId": u, "durationS": 1}, org=group[u])).job.id for u in group}
    a2 = (await store.add("sleep", {"userId": "alice", "durationS": 1}, org="acme")).job.id
    a1, b1, c1 = made["alice"], made["bob"], made["carol"]
    taken = await c.take(up_to=4)
    assert {j.id for j in taken} == {a1, b1, c1}  # alice's second would take acme past its share
    assert a2 not in c.held
    view = await store.get(a2)
    assert view.status == "waiting" and "your group acme's GPU share is in use" in (view.message or ""), view
    assert await redis.hgetall(keys.gpu_holding) == {"alice": "500", "bob": "500", "org:acme": "1000", "carol": "500"}
    assert await store.counts("sleep") == {**await store.counts("sleep"), "active": 3}
    # a third of alice's, taken later, waits too; cancelled while it waits, it is gone
    a3 = (await store.add("sleep", {"userId": "alice", "durationS": 1}, org="acme")).job.id
    assert await c.take() == [] and (await store.get(a3)).status == "waiting"
    assert (await store.cancel(a3)).status == "cancelled"
    # the consumer of a1 died: its lock ran out and BullMQ's stall check put a1 back in `wait`; the
    # next settle gives its share back (a2 goes back too), and a1 is taken again before a2
    by_id = {j.id: j for j in taken}
    await redis.delete(keys.bull_lock("sleep", a1))
    assert await redis.lrem(keys.bull("sleep", "active"), 1, a1) == 1
    await redis.rpush(keys.bull("sleep", "wait"), a1)
    c.held.pop(a1)
    c.shares._settled = 0.0
    await c.shares.settle()
    assert await redis.hget(keys.gpu_holding, "org:acme") == "500"
    again = await c.take(up_to=2)
    assert [j.id for j in again] == [a1]  # a2, put back too, waits again: acme is full once more
    assert await redis.hget(keys.gpu_holding, "org:acme") == "1000" and (await store.get(a2)).status == "waiting"
    nxt, lost = await c.complete([(by_id[b1], {"ok": 1}), (by_id[c1], {"ok": 1}), (again[0], {"ok": 1})])
    assert not lost and nxt == []
    [last] = await c.take()
    assert last.id == a2
    await c.complete([(last, {"ok": 1})])
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


async def test_a_parked_job_is_put_back_past_the_cancelled_ones_and_a_late_release_frees_nothing(
        make_store: Any, make_consumer: Any, redis: Any, prefix: str) -> None:
    """alice may hold one job's share: R runs, P1 P2 P3 wait for it; P1 and P2 are cancelled; R
    ends and P3 (not a dead entry) goes back. The attempt that ended gives back its share once: a
    second release of it, or of an earlier attempt of a job taken again since, frees nothing."""
    keys = Keys(prefix)
    store = make_store()
    c = make_consumer("sleep", store)
    c.shares = GpuShares(redis, keys, "sleep", keys.bull("sleep", ""), 0.5, Budgets(redis, keys, Budget(share=0.5)),
                         store.lifecycle)
    ids = [(await store.add("sleep", {"userId": "alice", "durationS": 1})).job.id for _ in range(4)]
    [running] = await c.take(up_to=4)
    assert running.id == ids[0] and await redis.zcard(keys.parked("alice")) == 3
    for cancelled in ids[1:3]:
        assert (await store.cancel(cancelled)).status == "cancelled"
    stale = running.token
    await c.shares.release([running])
    assert await redis.hgetall(keys.gpu_holding) == {}
    [again] = await c.take()
    assert again.id == ids[3]  # past the two cancelled ones
    assert await redis.hget(keys.gpu_holding, "alice") == "500"
    running.token = stale
    c.shares.counted[running.id] = stale  # a late, second release of R's attempt
    await c.shares.release([running])
    assert await redis.hget(keys.gpu_holding, "alice") == "500"  # P3's share is still counted
    await c.complete([(again, {"ok": 1})])
    assert await redis.hgetall(keys.gpu_holding) == {} and await redis.scard(keys.parkers) == 0
