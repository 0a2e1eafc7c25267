"""Reordering waiting jobs (POST /v1/jobs/{id}/move) on a real Redis: an admin's move to the
front is the next job taken; a user's moves trade their own places only, raced too."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from dash_ray.queues import JobStore, QueueConsumer, connect
from tests.redis.conftest import run_async
from tests.redis.test_gateway import auth

QUEUES = ("training", "upscaling", "generation", "sleep")


def _submit(c: Any, token: str, n: int, **extra: Any) -> list[str]:
    return [c.post("/v1/jobs/sleep", json={"durationS": 0.01, **extra}, headers=auth(token)).json()["id"]
            for _ in range(n)]


def _taken(redis_url: str, prefix: str, n: int) -> list[str]:
    """The next `n` jobs the sleep queue's consumer takes, one at a time, in order."""

    async def go() -> list[str]:
        r, b = connect(redis_url), connect(redis_url, blocking=True)
        c = QueueConsumer(r, b, "sleep", JobStore(r, prefix=prefix, queues=QUEUES).lifecycle, prefix=prefix)
        out = []
        try:
            for _ in range(n):
                out += [j.id for j in await c.take(block_s=5)]
        finally:
            await r.aclose()
            await b.aclose()
        return out

    return run_async(go())


def _order(c: Any, token: str, ids: list[str]) -> list[str]:
    places = {i: c.get(f"/v1/jobs/{i}", headers=auth(token)).json()["queuePosition"] for i in ids}
    return sorted(ids, key=lambda i: places[i])


def test_an_admins_move_to_the_front_runs_that_job_next(make_client: Any, tokens: Any, redis_url: str,
                                                        prefix: str) -> None:
    c = make_client(enable_sleep_queue=True)
    alice, bob, root = tokens("alice"), tokens("bob"), tokens("root", admin=True)
    a = _submit(c, alice, 2)
    b = _submit(c, bob, 2)
    late = _submit(c, bob, 1, steps=1)[0]
    low = c.post("/v1/jobs/sleep", json={"durationS": 0.01, "options": {"priority": 3}}, headers=auth(alice)).json()["id"]
    # an admin changes a job's priority: it goes to the back of priority 1 (here: first)
    r = c.post(f"/v1/jobs/{late}/move", json={"priority": 1}, headers=auth(root))
    assert r.status_code == 200 and r.json()["priority"] == 1 and r.json()["queuePosition"] == 1, r.text
    # and moves a priority-3 job to the front of the whole queue
    r = c.post(f"/v1/jobs/{low}/move", json={"to": "front"}, headers=auth(root))
    assert r.status_code == 200 and r.json()["queuePosition"] == 1, r.text
    assert c.get(f"/v1/jobs/{late}", headers=auth(bob)).json()["queuePosition"] == 2
    assert _taken(redis_url, prefix, 2) == [low, late]
    assert set(_taken(redis_url, prefix, 4)) == {*a, *b}


def test_a_user_reorders_only_their_own_places_never_ahead_of_another_user(
        make_client: Any, tokens: Any, redis_url: str, prefix: str) -> None:
    c = make_client(enable_sleep_queue=True)
    alice, bob = tokens("alice"), tokens("bob")
    a = _submit(c, alice, 3)
    b = _submit(c, bob, 2)
    before = _order(c, alice, a)
    everyone = _order(c, tokens("root", admin=True), a + b)
    assert everyone == [a[0], b[0], a[1], b[1], a[2]]  # fair share interleaves them
    r = c.post(f"/v1/jobs/{a[2]}/move", json={"to": "front"}, headers=auth(alice))
    assert r.status_code == 200 and r.json()["queuePosition"] == 1, r.text
    r = c.post(f"/v1/jobs/{a[1]}/move", json={"before": a[0]}, headers=auth(alice))
    assert r.status_code == 200, r.text
    assert before != _order(c, alice, a)
    # hostile: before another user's job, a priority change, another user's job, a running job
    r = c.post(f"/v1/jobs/{a[0]}/move", json={"before": b[0]}, headers=auth(alice))
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_payload", r.text
    assert c.post(f"/v1/jobs/{a[0]}/move", json={"priority": 1}, headers=auth(alice)).status_code == 403
    assert c.post(f"/v1/jobs/{b[1]}/move", json={"to": "front"}, headers=auth(alice)).status_code == 404
    for bad in ({}, {"to": "back"}, {"to": "front", "priority": 1}, {"before": ""}, {"priority": 7}):
        assert c.post(f"/v1/jobs/{a[0]}/move", json=bad, headers=auth(alice)).status_code == 422, bad
    # bob's jobs kept their places; alice's three traded theirs
    assert _taken(redis_url, prefix, 5) == [a[2], b[0], a[1], b[1], a[0]]
    r = c.post(f"/v1/jobs/{a[0]}/move", json={"to": "front"}, headers=auth(alice))
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_state", r.text


def test_concurrent_moves_keep_every_place_and_every_other_users_job_where_it_was(
        redis: Any, redis_url: str, prefix: str) -> None:
    async def go() -> None:
        r = connect(redis_url)
        store = JobStore(r, prefix=prefix, queues=QUEUES)
        mine = [(await store.add("sleep", {"durationS": 0.01}, user_id="alice")).job.id for _ in range(8)]
        theirs = [(await store.add("sleep", {"durationS": 0.01}, user_id="bob")).job.id for _ in range(8)]
        key = store.keys.bull("sleep", "prioritized")
        scores = dict(await r.zrange(key, 0, -1, withscores=True))
        rng = random.Random(7)
        moves = []
        for _ in range(60):
            job = rng.choice(mine)
            other = rng.choice([j for j in mine if j != job])
            moves.append(store.move(job, "before", other) if rng.random() < 0.5 else store.move(job, "own"))
        await asyncio.gather(*moves)
        after = dict(await r.zrange(key, 0, -1, withscores=True))
        assert {j: after[j] for j in theirs} == {j: scores[j] for j in theirs}  # bob's untouched
        assert sorted(after[j] for j in mine) == sorted(scores[j] for j in mine)  # alice's places, traded
        assert len(set(after[j] for j in mine)) == len(mine)
        await store.aclose()
        await r.aclose()

    asyncio.run(go())
