"""Fair share within a queue, in Redis: jobs of one priority are taken round-robin across users
(weighted), priority still first, FIFO within a user; positions follow the fair order, and a
plain BullMQ client sees the same order in the prioritized set."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from bullmq import Queue

from tests.helpers import complete, take_one


async def take_all(consumer: Any, n: int) -> list[Any]:
    out = []
    for _ in range(n):
        job = await take_one(consumer)
        assert job is not None
        out.append(job)
        await complete(consumer, job, {})
    return out


async def test_a_light_users_jobs_go_between_a_heavy_users(make_store: Any, make_consumer: Any) -> None:
    store = make_store()
    heavy = [(await store.add("sleep", {"userId": "a", "durationS": 0})).job.id for _ in range(200)]
    consumer = make_consumer("sleep", store)
    first = await take_all(consumer, 5)  # a's first five are served meanwhile
    assert [j.id for j in first] == heavy[:5]  # FIFO within a user
    light = [(await store.add("sleep", {"userId": "b", "durationS": 0})).job.id for _ in range(10)]
    view = await store.get(light[0])
    assert view.queue_position is not None and view.queue_position <= 2  # its place: next, or after one of a's
    order = [j.id for j in await take_all(consumer, 40)]
    assert [i for i in order if i in light] == light  # FIFO within b too
    assert max(order.index(i) for i in light) < order.index(heavy[5 + 29])  # all 10 before a's 30th after them
    a_order = [i for i in order if i not in light]
    assert a_order == heavy[5:5 + len(a_order)]


async def test_weights_share_the_queue_two_to_one(make_store: Any, make_consumer: Any) -> None:
    store = make_store()
    for _ in range(150):
        await store.add("sleep", {"userId": "heavy", "durationS": 0}, weight=2.0)
        await store.add("sleep", {"userId": "light", "durationS": 0})
    order = await take_all(make_consumer("sleep", store), 90)
    share = Counter(j.user_id for j in order)
    assert abs(share["heavy"] / share["light"] - 2.0) <= 0.2, share


async def test_priority_comes_before_fairness(make_store: Any, make_consumer: Any) -> None:
    store = make_store()
    low = [(await store.add("training", {"userId": "a", "loraId": f"l{i}", "prompt": "p",
                                         "imageUrls": ["data:image/png;base64,AA=="]},
                            {"priority": 3})).job.id for i in range(3)]
    high = [(await store.add("training", {"userId": "a", "loraId": f"h{i}", "prompt": "p",
                                          "imageUrls": ["data:image/png;base64,AA=="]},
                             {"priority": 1})).job.id for i in range(2)]
    mid = (await store.add("training", {"userId": "b", "loraId": "m", "prompt": "p",
                                        "imageUrls": ["data:image/png;base64,AA=="]})).job.id
    order = [j.id for j in await take_all(make_consumer("training", store), 6)]
    assert order == [*high, mid, *low]


async def test_fifo_when_fair_share_is_off_and_what_plain_bullmq_sees(make_store: Any, make_consumer: Any,
                                                                      redis_url: str, prefix: str) -> None:
    fifo = make_store(fair_share=False)
    a = [(await fifo.add("sleep", {"userId": "a", "durationS": 0})).job.id for _ in range(5)]
    b = (await fifo.add("sleep", {"userId": "b", "durationS": 0})).job.id
    assert (await fifo.get(b)).queue_position == 6
    fair = make_store()
    c = (await fair.add("sleep", {"userId": "c", "durationS": 0})).job.id
    assert (await fair.get(c)).queue_position == 2  # after a's first, not after all of them
    queue = Queue("sleep", {"connection": redis_url, "prefix": prefix})
    try:  # BullMQ's own view: the prioritized set in the order the jobs will be taken
        seen = [j.id for j in await queue.getJobs(["prioritized"], 0, -1, True)]
    finally:
        await queue.close()
    order = [j.id for j in await take_all(make_consumer("sleep", fair), 7)]
    assert seen == order == [a[0], c, *a[1:], b]
    await asyncio.sleep(0)


async def test_clocks_that_no_longer_matter_are_pruned_and_the_order_stays(make_store: Any, make_consumer: Any,
                                                                           redis: Any, prefix: str) -> None:
    """One fair-share clock per user and priority: those at or below the level's floor (a job of
    theirs would start there anyway) are forgotten; the users still ahead keep theirs."""
    store = make_store()
    consumer = make_consumer("sleep", store)
    fair = store.keys.fair("sleep")
    for i in range(300):  # 300 users come and go
        await store.add("sleep", {"userId": f"u{i}", "durationS": 0})
    await take_all(consumer, 300)
    heavy = [(await store.add("sleep", {"userId": "heavy", "durationS": 0})).job.id for _ in range(5)]
    assert await redis.hlen(fair) == 302  # 301 users' clocks and the level's latest start
    assert await consumer.adoption.prune_fair(count=50) == 300  # walks the whole hash, page by page
    assert set(await redis.hkeys(fair)) == {"u:2:heavy", "last:2"}  # (priority 2, the default) heavy's turn is still ahead
    assert await consumer.adoption.prune_fair() == 0
    # the order is the one the clocks gave: a returning user goes just after heavy's first
    back = (await store.add("sleep", {"userId": "u7", "durationS": 0})).job.id
    order = [j.id for j in await take_all(consumer, 6)]
    assert order == [heavy[0], back, *heavy[1:]]
    assert await consumer.adoption.prune_fair() == 2  # nothing waits: nobody is owed a turn, every clock goes
    assert await redis.hkeys(fair) == ["last:2"]
