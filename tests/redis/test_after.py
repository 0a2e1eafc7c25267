"""Jobs that wait for jobs made before them (`options.after`, and the unfinished jobs a payload's
`job://` inputs name), on a real Redis, through the gateway app, taken as the scheduler takes
them; each failure policy; a cancel on either side; another user's jobs out of reach; and a
flow's parent retried without running its finished child again."""

from __future__ import annotations

from typing import Any

import redis

from dash_ray.queues import JobStore, Keys, QueueConsumer, connect
from tests.redis.conftest import run_async
from tests.redis.test_flows import QUEUES, _flow, _take
from tests.redis.test_gateway import auth

MADE = {"images": ["/v1/artifacts/alice/g1/image-0.png"]}


def _ids(taken: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [job_id for job_id, _data in taken]


def test_a_job_waits_for_one_made_before_it_and_reads_its_image(make_client: Any, tokens: Any, redis_url: str,
                                                                prefix: str) -> None:
    c = make_client()
    alice = auth(tokens("alice"))
    assert c.post("/v1/jobs/generation", json={"prompt": "a fox", "jobId": "g1"}, headers=alice).status_code == 201
    # named as an input while it waits: the upscale waits for it without naming it in `after`
    r = c.post("/v1/jobs/upscaling", json={"imageUrl": "job://g1/images/0", "scale": 2, "jobId": "up1"},
               headers=alice)
    assert r.status_code == 201, r.text
    view = r.json()
    assert view["status"] == "waiting" and view["after"] == ["g1"] and "waiting for 1 job first" in view["message"]
    # and a second job waits for the same one, named in `after`
    r = c.post("/v1/jobs/generation", json={"prompt": "then this", "jobId": "g2", "options": {"after": ["g1"]}},
               headers=alice)
    assert r.status_code == 201 and r.json()["after"] == ["g1"], r.text
    assert _take(redis_url, prefix, "upscaling", 0.3) == []  # it waits
    assert _ids(_take(redis_url, prefix, "generation", 5, result=MADE)) == ["g1"]  # (g2 waits too)
    [(taken, data)] = _take(redis_url, prefix, "upscaling", 5, resolve=True)
    assert taken == "up1" and data["imageUrl"] == "artifact://alice/g1/image-0.png"
    assert _ids(_take(redis_url, prefix, "generation", 5)) == ["g2"]
    assert c.get("/v1/jobs/up1", headers=alice).json()["status"] == "completed"
    # a job that ended completed is waited for no longer: the new one is handed out at once
    r = c.post("/v1/jobs/generation", json={"prompt": "x", "jobId": "g3", "options": {"after": ["g1", "g2"]}},
               headers=alice)
    assert r.status_code == 201, r.text
    assert _ids(_take(redis_url, prefix, "generation", 5)) == ["g3"]
    # a waiting job is not a flow's parent: cancelling it leaves the jobs it waits for alone
    c.post("/v1/jobs/generation", json={"prompt": "slow", "jobId": "g4"}, headers=alice)
    c.post("/v1/jobs/generation", json={"prompt": "after", "jobId": "g5", "options": {"after": ["g4"]}},
           headers=alice)
    assert c.delete("/v1/jobs/g5", headers=alice).json()["status"] == "cancelled"
    assert c.get("/v1/jobs/g4", headers=alice).json()["status"] == "waiting"
    r = redis.Redis.from_url(redis_url)
    keys = Keys(prefix)
    # nothing of g5 is left behind: g4 no longer names it, and BullMQ's flow keys were never used
    assert r.hlen(keys.waiters("g4")) == 0 and not r.exists(keys.deps("g5"))
    assert r.scard(keys.bull("upscaling", "up1:dependencies")) == 0
    r.close()
    assert _ids(_take(redis_url, prefix, "generation", 5)) == ["g4"]
    assert _take(redis_url, prefix, "generation", 0.3) == []  # g5 never runs
    assert c.get("/v1/usage", headers=alice).json()["jobsUnfinished"]["used"] == 0


def test_a_failed_or_cancelled_job_fails_those_waiting_for_it_unless_ignored(make_client: Any, tokens: Any,
                                                                             redis_url: str, prefix: str) -> None:
    c = make_client()
    alice = auth(tokens("alice"))
    c.post("/v1/jobs/generation", json={"prompt": "a", "jobId": "f1"}, headers=alice)
    c.post("/v1/jobs/upscaling", json={"imageUrl": "job://f1/images/0", "scale": 2, "jobId": "fails"},
           headers=alice)
    c.post("/v1/jobs/sleep", json={"durationS": 0.1, "jobId": "goes-on", "options": {
        "after": ["f1"], "afterFailure": "ignore"}}, headers=alice)
    _take(redis_url, prefix, "generation", 5, fail="out of memory")
    # handed out failed in advance (BullMQ's deferred failure): it ends at once, unrun
    [(taken, _data)] = _take(redis_url, prefix, "upscaling", 5, resolve=True)
    view = c.get("/v1/jobs/fails", headers=alice).json()
    assert taken == "fails" and view["status"] == "failed" and "f1" in view["error"], view
    assert _ids(_take(redis_url, prefix, "sleep", 5)) == ["goes-on"]  # it runs without
    assert c.get("/v1/jobs/goes-on", headers=alice).json()["status"] == "completed"
    # a job that ended failed is refused as something to wait for (it would fail unrun)...
    r = c.post("/v1/jobs/sleep", json={"durationS": 0.1, "options": {"after": ["f1"]}}, headers=alice)
    assert r.status_code == 422 and "f1" in r.json()["error"]["message"], r.text
    # ...and a cancel of the job waited for fails the job waiting
    c.post("/v1/jobs/generation", json={"prompt": "b", "jobId": "c1"}, headers=alice)
    c.post("/v1/jobs/generation", json={"prompt": "c", "jobId": "c3"}, headers=alice)
    c.post("/v1/jobs/sleep", json={"durationS": 0.1, "jobId": "c2", "options": {"after": ["c1", "c3"]}},
           headers=alice)
    assert c.delete("/v1/jobs/c1", headers=alice).json()["status"] == "cancelled"
    _take(redis_url, prefix, "sleep", 5)
    view = c.get("/v1/jobs/c2", headers=alice).json()
    assert view["status"] == "failed" and "c1 cancelled" in view["error"], view
    # retried by its owner, it runs (it waits no longer), while c3 has not run
    assert c.post("/v1/jobs/c2/retry", headers=alice).status_code == 200
    assert _ids(_take(redis_url, prefix, "sleep", 5)) == ["c2"]
    assert c.get("/v1/jobs/c2", headers=alice).json()["status"] == "completed"
    assert _ids(_take(redis_url, prefix, "generation", 5)) == ["c3"]
    assert c.get("/v1/jobs/c3", headers=alice).json()["status"] == "completed"


def test_another_users_jobs_cannot_be_waited_for_nor_read(make_client: Any, tokens: Any, redis_url: str,
                                                         prefix: str) -> None:
    c = make_client()
    alice, bob = auth(tokens("alice")), auth(tokens("bob"))
    c.post("/v1/jobs/generation", json={"prompt": "alice's", "jobId": "a1"}, headers=alice)
    bad = [
        {"durationS": 0.1, "options": {"after": ["a1"]}},  # alice's job
        {"durationS": 0.1, "options": {"after": ["nowhere"]}},
        {"durationS": 0.1, "options": {"after": ["b0", "b0"]}},  # twice
        {"durationS": 0.1, "options": {"after": [f"x{i}" for i in range(21)]}},  # too many
        {"durationS": 0.1, "options": {"after": ["b0"], "delayS": 5}},  # with a delay
        {"durationS": 0.1, "options": {"after": ["b0"], "cache": True}},
    ]
    c.post("/v1/jobs/sleep", json={"durationS": 0.1, "jobId": "b0"}, headers=bob)
    for body in bad:
        r = c.post("/v1/jobs/sleep", json=body, headers=bob)
        assert r.status_code == 422, (body, r.text)
        assert "alice" not in r.text and "a fox" not in r.text
    r = c.post("/v1/jobs/upscaling", json={"imageUrl": "job://a1/images/0", "scale": 2}, headers=bob)
    assert r.status_code == 422 and "no job a1 of yours" in r.json()["error"]["message"], r.text
    r = c.post("/v1/flows", json={**_flow(child_id="b-child"), "options": {"after": ["b0"]}}, headers=bob)
    assert r.status_code == 422, r.text
    assert c.get("/v1/usage", headers=bob).json()["jobsUnfinished"]["used"] == 1  # b0 alone
    # a training job named as a waited-for job is what lets a generation name a LoRA not made yet:
    # another kind of job of bob's does not
    r = c.post("/v1/jobs/generation", json={"prompt": "x", "settings": {"loraId": "b0"}, "options": {"after": ["b0"]}},
               headers=bob)
    assert r.status_code == 422 and "loraId" in r.text, r.text
    # bob cannot hang his job on alice's waiting one by submitting under its id
    c.post("/v1/jobs/generation", json={"prompt": "after", "jobId": "a2", "options": {"after": ["a1"]}},
           headers=alice)
    c.post("/v1/jobs/sleep", json={"durationS": 0.1, "jobId": "b1", "options": {"delayS": 3600}}, headers=bob)
    r = c.post("/v1/jobs/generation", json={"prompt": "z", "jobId": "a2", "options": {"after": ["b1"]}}, headers=bob)
    assert r.status_code == 409, r.text
    assert c.delete("/v1/jobs/b1", headers=bob).status_code == 200  # were a2 waiting for it, it would fail now
    # alice's jobs run untouched by any of it
    assert _ids(_take(redis_url, prefix, "generation", 5, result=MADE)) == ["a1"]
    assert _ids(_take(redis_url, prefix, "generation", 5)) == ["a2"]
    assert c.get("/v1/jobs/a2", headers=alice).json()["status"] == "completed"


def test_a_retried_parent_does_not_rerun_its_finished_children(make_client: Any, tokens: Any, redis_url: str,
                                                               prefix: str) -> None:
    c = make_client(min_backoff_s=0)
    alice = auth(tokens("alice"))
    flow = _flow(child_id="kid")
    flow["options"] = {"attempts": 2, "backoff": {"delayS": 0}}
    parent = c.post("/v1/flows", json=flow, headers=alice).json()["job"]["id"]
    assert _ids(_take(redis_url, prefix, "generation", 5, result=MADE)) == ["kid"]

    async def fail_once() -> list[str]:
        r, b = connect(redis_url), connect(redis_url, blocking=True)
        try:
            q = QueueConsumer(r, b, "upscaling", JobStore(r, prefix=prefix, queues=QUEUES).lifecycle, prefix=prefix)
            jobs = await q.take(block_s=5)
            for job in jobs:
                await q.fail(job, "worker lost", retry=True)  # attempts left: BullMQ retries it
            return [j.id for j in jobs]
        finally:
            await r.aclose()
            await b.aclose()

    assert run_async(fail_once()) == [parent]
    [(again, data)] = _take(redis_url, prefix, "upscaling", 5, resolve=True)
    assert again == parent and data["imageUrl"] == "artifact://alice/g1/image-0.png"
    assert _take(redis_url, prefix, "generation", 0.3) == []  # the child is not run again
    kid = c.get("/v1/jobs/kid", headers=alice).json()
    top = c.get(f"/v1/jobs/{parent}", headers=alice).json()
    assert kid["status"] == "completed" and kid["attemptsMade"] == 1, kid
    assert top["status"] == "completed" and top["attemptsMade"] == 2, top
