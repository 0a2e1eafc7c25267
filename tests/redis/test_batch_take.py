"""Taking a batch on a real Redis: only the head's compatible jobs, in the queue's order, never
past one that cannot join; priorities first; a lone job costs no extra read."""

from __future__ import annotations

from typing import Any

from dash_ray.models.queues import queue_def


def gen(user: str, job_id: str, width: int = 64, **settings: Any) -> dict[str, Any]:
    return {"userId": user, "jobId": job_id, "prompt": f"prompt {job_id}",
            "settings": {"steps": 4, "width": width, "height": 64, **settings}}


async def consumer_of(make_consumer: Any, store: Any) -> Any:
    c = make_consumer("generation", store)
    c.batch_of = queue_def("generation").batch_of
    return c


async def test_a_batch_is_the_heads_compatible_prefix(make_store: Any, make_consumer: Any) -> None:
    store = make_store()
    for job_id, width in (("a1", 64), ("a2", 64), ("a3", 64), ("b1", 80), ("a4", 64)):
        await store.add("generation", gen("u", job_id, width))
    c = await consumer_of(make_consumer, store)
    first = await c.take(up_to=8)
    assert [j.id for j in first] == ["a1", "a2", "a3"]  # a4 is behind b1: never taken past it
    second = await c.take(up_to=8)
    assert [j.id for j in second] == ["b1"]
    third = await c.take(up_to=8)
    assert [j.id for j in third] == ["a4"]


async def test_rows_bound_a_batch_and_seeds_prompts_may_differ(make_store: Any, make_consumer: Any) -> None:
    store = make_store()
    await store.add("generation", gen("u", "n1", numImages=3, seed=1))
    await store.add("generation", gen("u", "n2", numImages=3, seed=2, negativePrompt="blurry"))
    await store.add("generation", gen("u", "n3", numImages=3, seed=3))
    c = await consumer_of(make_consumer, store)
    assert [j.id for j in await c.take(up_to=8)] == ["n1", "n2"]  # 6 rows; a third job would make 9
    assert [j.id for j in await c.take(up_to=8)] == ["n3"]


async def test_incompatible_settings_never_share(make_store: Any, make_consumer: Any) -> None:
    store = make_store()
    variants = [{}, {"steps": 5}, {"guidanceScale": 3.0}, {"model": "tiny"}, {"height": 72}]
    for i, extra in enumerate(variants):
        data = gen("u", f"v{i}")
        data["settings"].update(extra)
        await store.add("generation", data)
    c = await consumer_of(make_consumer, store)
    taken = [[j.id for j in await c.take(up_to=8)] for _ in variants]
    assert taken == [[f"v{i}"] for i in range(len(variants))]


async def test_priority_then_fair_order_hold_in_a_batch(make_store: Any, make_consumer: Any) -> None:
    store = make_store()
    for i in range(3):
        await store.add("generation", gen("alice", f"al{i}"), {"priority": 2})
    await store.add("generation", gen("bob", "bob0"), {"priority": 2})
    await store.add("generation", gen("carol", "hi0"), {"priority": 1})
    c = await consumer_of(make_consumer, store)
    # priority 1 first; then alice and bob take turns at priority 2 (bob's job is second, not fourth)
    assert [j.id for j in await c.take(up_to=3)] == ["hi0", "al0", "bob0"]
    assert [j.id for j in await c.take(up_to=3)] == ["al1", "al2"]


async def test_another_users_lora_never_shares_and_fetch_next_takes_a_batch(make_store: Any,
                                                                          make_consumer: Any) -> None:
    store = make_store()
    await store.add("generation", gen("alice", "l1", loraId="style"))
    await store.add("generation", gen("bob", "l2", loraId="style"))  # bob's "style" is another LoRA
    await store.add("generation", gen("alice", "l3", loraId="style"))
    c = await consumer_of(make_consumer, store)
    [head] = await c.take(up_to=1)
    assert head.id == "l1" and await c.take_batch(head, 8) == []  # l2 is bob's: l3 is behind it
    [nxt] = await c.take(up_to=1)
    rest = await c.take_batch(nxt, 8)
    assert nxt.id == "l2" and [j.id for j in rest] == []
    [last] = await c.take(up_to=8)
    assert last.id == "l3"


async def test_a_head_knows_whether_company_may_still_come(make_store: Any, make_consumer: Any) -> None:
    store = make_store()
    c = await consumer_of(make_consumer, store)
    await store.add("generation", gen("u", "alone"))
    [head] = await c.take(up_to=8)
    assert not head.batch_closed  # nothing behind it yet: a burst's next jobs may join (the window)
    await store.add("generation", gen("u", "next"))
    await store.add("generation", gen("u", "wide", width=80))
    assert [d["jobId"] for d in await c.peek(4)] == ["next", "wide"]
    assert [j.id for j in await c.take_batch(head, 8)] == ["next"] and head.batch_closed  # "wide" cannot join
    await store.add("generation", gen("u", "w2", width=80))
    [wide, w2] = await c.take(up_to=2)
    assert (wide.id, w2.id) == ("wide", "w2") and wide.batch_closed  # full
