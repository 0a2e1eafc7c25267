"""The result cache and in-flight deduplication (`options.cache`) on a real Redis, through the
gateway app: a repeat of a completed repeatable payload answers at once with its result and
makes nothing; identical submits while one runs follow it (their own ids and events, one run)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from dash_ray.queues import JobStore, Keys, QueueConsumer, connect, connect_sync
from tests.redis.conftest import run_async
from tests.redis.test_gateway import auth, recv_until, run_one

QUEUES = ("training", "upscaling", "generation", "sleep")
SEEDED = {"prompt": "a lighthouse at dusk", "settings": {"seed": 7, "steps": 4}, "options": {"cache": True}}


def _settle(redis_url: str, prefix: str, queue: str = "generation") -> int:
    """What the queue's consumer does every second: end the followers of runs that ended."""

    async def go() -> int:
        r, b = connect(redis_url), connect(redis_url, blocking=True)
        try:
            c = QueueConsumer(r, b, queue, JobStore(r, prefix=prefix, queues=QUEUES).lifecycle, prefix=prefix)
            return await c.settle_followers()
        finally:
            await r.aclose()
            await b.aclose()

    return int(run_async(go()))


def _waiting(c: Any, root: str) -> int:
    q = {q["name"]: q for q in c.get("/v1/queues", headers=auth(root)).json()}["generation"]
    return int(q["counts"]["waiting"])


def test_a_repeat_of_a_completed_run_answers_at_once_with_its_result_and_runs_nothing(
        make_client: Any, tokens: Any, redis_url: str, prefix: str) -> None:
    c = make_client()
    alice, bob, root = tokens("alice"), tokens("bob"), tokens("root", admin=True)
    first = c.post("/v1/jobs/generation", json=SEEDED, headers=auth(alice))
    assert first.status_code == 201 and "cached" not in first.json(), first.text
    run_one(redis_url, prefix, "generation", result={"images": ["/v1/artifacts/alice/x/0.png"]})
    again = c.post("/v1/jobs/generation", json=SEEDED, headers=auth(alice))
    assert again.status_code == 200, again.text
    body = again.json()
    assert body["cached"] is True and body["id"] == first.json()["id"] and body["status"] == "completed"
    assert body["result"]["images"][0].startswith("/v1/artifacts/alice/x/0.png")
    assert _waiting(c, root) == 0  # nothing was queued
    # counted in her usage as an answer of the cache: no attempt, no GPU time
    gpu = c.get("/v1/usage", params={"groupBy": "model"}, headers=auth(alice)).json()["gpu"]
    assert gpu["total"]["cached"] == 1 and gpu["total"]["attempts"] == 0 and gpu["total"]["gpuS"] == 0, gpu
    # another user's identical submit is not answered by alice's run; nor a different seed, nor no cache
    for token, payload in ((bob, SEEDED), (alice, {**SEEDED, "settings": {"seed": 8, "steps": 4}}),
                           (alice, {**SEEDED, "options": {"cache": False}})):
        r = c.post("/v1/jobs/generation", json=payload, headers=auth(token))
        assert r.status_code == 201 and "cached" not in r.json(), r.text
    # a payload that runs differently each time cannot ask for the cache
    r = c.post("/v1/jobs/generation", json={"prompt": "no seed", "options": {"cache": True}}, headers=auth(alice))
    assert r.status_code == 422 and r.json()["error"]["errors"][0]["field"] == "options.cache", r.text


def test_the_cache_entry_goes_with_the_record_of_the_run(make_client: Any, tokens: Any, redis_url: str,
                                                         prefix: str) -> None:
    c = make_client()
    alice = tokens("alice")
    first = c.post("/v1/jobs/generation", json=SEEDED, headers=auth(alice)).json()["id"]
    run_one(redis_url, prefix, "generation")
    r = connect_sync(redis_url)
    r.delete(Keys(prefix).job(first))  # its record expired (or was trimmed)
    r.close()
    r = c.post("/v1/jobs/generation", json=SEEDED, headers=auth(alice))
    assert r.status_code == 201 and r.json()["id"] != first and "sameAs" not in r.json(), r.text


def test_identical_submits_while_one_runs_follow_it_and_end_with_its_result(
        make_client: Any, tokens: Any, redis_url: str, prefix: str) -> None:
    c = make_client(cache_results=True)  # the deployment's default: no option needed
    alice, root = tokens("alice"), tokens("root", admin=True)
    plain = {k: v for k, v in SEEDED.items() if k != "options"}
    answers: list[Any] = []
    gate = threading.Barrier(5)

    def submit() -> None:
        gate.wait()
        answers.append(c.post("/v1/jobs/generation", json=plain, headers=auth(alice)))

    threads = [threading.Thread(target=submit) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a.status_code == 201 for a in answers), [a.text for a in answers]
    views = [a.json() for a in answers]
    leaders = [v for v in views if "sameAs" not in v]
    assert len(leaders) == 1 and len({v["id"] for v in views}) == 5  # one run; five jobs
    leader = leaders[0]["id"]
    assert all(v["sameAs"] == leader for v in views if v["id"] != leader)
    assert _waiting(c, root) == 1
    follower = next(v["id"] for v in views if v["id"] != leader)
    with c.websocket_connect(f"/ws?token={alice}") as ws:
        ws.send_json({"type": "subscribe", "jobIds": [follower]})
        first = ws.receive_json()
        assert first["type"] == "job:progress" and first["status"] == "waiting" and first["jobId"] == follower
        assert run_one(redis_url, prefix, "generation", result={"images": ["a.png"]}) == leader
        assert _settle(redis_url, prefix) == 4
        done = recv_until(ws, lambda m: m["type"] == "job:completed")[-1]
    assert done["jobId"] == follower and done["result"] == {"images": ["a.png"]}
    for v in views:
        got = c.get(f"/v1/jobs/{v['id']}", headers=auth(alice)).json()
        assert got["status"] == "completed" and got["result"] == {"images": ["a.png"]}, got
    assert _settle(redis_url, prefix) == 0  # settled once
    # now completed: a repeat is answered from the cache
    assert c.post("/v1/jobs/generation", json=plain, headers=auth(alice)).json()["id"] == leader


def test_a_follower_ends_as_its_run_failed_and_may_be_cancelled_alone(
        make_client: Any, tokens: Any, redis_url: str, prefix: str) -> None:
    c = make_client()
    alice = auth(tokens("alice"))
    leader = c.post("/v1/jobs/generation", json=SEEDED, headers=alice).json()["id"]
    a, b = (c.post("/v1/jobs/generation", json=SEEDED, headers=alice).json() for _ in range(2))
    assert a["sameAs"] == leader == b["sameAs"]
    r = c.delete(f"/v1/jobs/{a['id']}", headers=alice)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert c.get(f"/v1/jobs/{leader}", headers=alice).json()["status"] == "waiting"  # the run goes on
    run_one(redis_url, prefix, "generation", fail="out of memory")
    assert _settle(redis_url, prefix) == 1  # b (a ended already)
    got = c.get(f"/v1/jobs/{b['id']}", headers=alice).json()
    assert got["status"] == "failed" and leader in got["error"] and "out of memory" in got["error"], got
    # a failed run is not cached: the next identical submit runs
    r = c.post("/v1/jobs/generation", json=SEEDED, headers=alice)
    assert r.status_code == 201 and "sameAs" not in r.json() and "cached" not in r.json(), r.text


def test_the_store_follows_concurrent_identical_adds(redis_url: str, prefix: str) -> None:
    async def go() -> None:
        r = connect(redis_url)
        store = JobStore(r, prefix=prefix, queues=QUEUES, cache_results=True)
        made = await asyncio.gather(*(store.add("sleep", {"durationS": 0.01}, user_id="u") for _ in range(20)))
        assert len({m.job.id for m in made}) == 20 and sum(m.job.same_as is None for m in made) == 1
        await store.aclose()
        await r.aclose()

    asyncio.run(go())
