"""Flows (`POST /v1/flows`) on a real Redis, through the gateway app, with the jobs taken as the
scheduler takes them: children first, then the parent with its `job://` input resolved; each
failure policy; a parent cancelled mid-flow; a flow refused whole."""

from __future__ import annotations

from typing import Any

from dash_ray.queues import JobStore, QueueConsumer, connect
from tests.helpers import complete
from tests.redis.conftest import run_async
from tests.redis.test_gateway import auth

QUEUES = ("training", "upscaling", "generation", "sleep")


def _flow(child_fails: str = "fail", child_id: str = "gen-1") -> dict[str, Any]:
    return {"queue": "upscaling", "payload": {"imageUrl": f"job://{child_id}/images/0", "scale": 2},
            "children": [{"queue": "generation", "payload": {"jobId": child_id, "prompt": "a fox"},
                          "onFailure": child_fails}]}


def _take(redis_url: str, prefix: str, queue: str, block_s: float, *, result: Any = None, fail: str | None = None,
          resolve: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """Take what `queue` hands out (at most one job), as the scheduler does: its `job://` inputs
    resolved first (`resolve`), then completed with `result` (or failed with `fail`)."""

    async def go() -> list[tuple[str, dict[str, Any]]]:
        r, b = connect(redis_url), connect(redis_url, blocking=True)
        try:
            c = QueueConsumer(r, b, queue, JobStore(r, prefix=prefix, queues=QUEUES).lifecycle, prefix=prefix)
            jobs = await c.take(block_s=block_s)
            if resolve:
                jobs = await c.resolve_inputs(jobs)
            for job in jobs:
                if job.deferred_failure:  # (the worker's handoff fails it so: a flow's child failed)
                    await c.fail(job, job.deferred_failure, retry=False)
                elif fail:
                    await c.fail(job, fail, retry=False)
                else:
                    await complete(c, job, result if result is not None else {"ok": True})
            return [(j.id, dict(j.data)) for j in jobs]
        finally:
            await r.aclose()
            await b.aclose()

    return run_async(go())


def test_generate_then_upscale_as_one_flow(make_client: Any, tokens: Any, redis_url: str, prefix: str) -> None:
    c = make_client()
    alice = auth(tokens("alice"))
    r = c.post("/v1/flows", json=_flow(), headers=alice)
    assert r.status_code == 201, r.text
    flow = r.json()
    parent, child = flow["job"]["id"], flow["children"][0]["job"]["id"]
    assert child == "gen-1" and flow["job"]["status"] == "waiting" and "waiting for 1 job" in flow["job"]["message"]
    assert _take(redis_url, prefix, "upscaling", 0.3) == []  # it waits for its child
    made = {"images": ["/v1/artifacts/alice/gen-1/image-0.png"]}
    assert [j for j, _ in _take(redis_url, prefix, "generation", 5, result=made)] == [child]
    [(taken, data)] = _take(redis_url, prefix, "upscaling", 5, resolve=True)
    assert taken == parent and data["imageUrl"] == "artifact://alice/gen-1/image-0.png"  # the child's image
    assert c.get(f"/v1/jobs/{parent}", headers=alice).json()["status"] == "completed"
    # both are alice's jobs, in her history
    listed = {j["id"] for j in c.get("/v1/jobs", headers=alice).json()["jobs"]}
    assert {parent, child} <= listed


def test_a_failed_child_fails_its_parent_or_is_ignored(make_client: Any, tokens: Any, redis_url: str,
                                                       prefix: str) -> None:
    c = make_client()
    alice = auth(tokens("alice"))
    failing = c.post("/v1/flows", json=_flow("fail", "g-fail"), headers=alice).json()
    _take(redis_url, prefix, "generation", 5, fail="out of memory")
    # BullMQ hands the parent out failed-in-advance (its `deferredFailure`): it ends at once, unrun
    [(taken, _data)] = _take(redis_url, prefix, "upscaling", 5, resolve=True)
    view = c.get(f"/v1/jobs/{failing['job']['id']}", headers=alice).json()
    assert taken == failing["job"]["id"] and view["status"] == "failed" and "g-fail" in view["error"], view

    ignoring = c.post("/v1/flows", json=_flow("ignore", "g-ignore"), headers=alice).json()
    _take(redis_url, prefix, "generation", 5, fail="out of memory")
    # the parent runs without it; its input from the failed child cannot be had: it fails, not retried
    assert [j for j, _ in _take(redis_url, prefix, "upscaling", 5, resolve=True)] == []
    view = c.get(f"/v1/jobs/{ignoring['job']['id']}", headers=alice).json()
    assert view["status"] == "failed" and "g-ignore did not complete" in view["error"], view


def test_a_parent_cancelled_mid_flow_cancels_the_jobs_it_waits_for(make_client: Any, tokens: Any,
                                                                 redis_url: str, prefix: str) -> None:
    c = make_client()
    alice = auth(tokens("alice"))
    flow = c.post("/v1/flows", json=_flow(), headers=alice).json()
    parent, child = flow["job"]["id"], flow["children"][0]["job"]["id"]
    r = c.delete(f"/v1/jobs/{parent}", headers=alice)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert c.get(f"/v1/jobs/{child}", headers=alice).json()["status"] == "cancelled"
    assert _take(redis_url, prefix, "generation", 0.3) == [] and _take(redis_url, prefix, "upscaling", 0.3) == []
    assert c.get("/v1/usage", headers=alice).json()["jobsUnfinished"]["used"] == 0


def test_a_flow_is_checked_whole_and_refused_whole(make_client: Any, tokens: Any, redis_url: str,
                                                   prefix: str) -> None:
    c = make_client(max_waiting_per_user=2)
    alice, bob = auth(tokens("alice")), auth(tokens("bob"))
    bobs = c.post("/v1/jobs/generation", json={"prompt": "bob's", "jobId": "bobs-gen"}, headers=bob).json()["id"]
    bad = [
        {**_flow(), "payload": {"imageUrl": f"job://{bobs}/images/0"}},  # another user's job
        {**_flow(), "payload": {"imageUrl": "job://nowhere/images/0"}},
        {**_flow(), "payload": {"imageUrl": "artifact://bob/bobs-gen/image-0.png"}},  # the server's own scheme
        {"queue": "generation", "payload": {"prompt": "x"}, "children": [
            {"queue": "generation", "payload": {"prompt": "y", "jobId": "same"}},
            {"queue": "generation", "payload": {"prompt": "z", "jobId": "same"}}]},  # an id twice
        {"queue": "generation", "payload": {"prompt": "deep"}, "children": [{"queue": "generation", "payload": {
            "prompt": "1"}, "children": [{"queue": "generation", "payload": {"prompt": "2"}, "children": [
                {"queue": "generation", "payload": {"prompt": "3"}, "children": [
                    {"queue": "generation", "payload": {"prompt": "4"}}]}]}]}]},  # 5 levels
        {"queue": "nope", "payload": {}},
    ]
    for body in bad:
        r = c.post("/v1/flows", json=body, headers=alice)
        assert r.status_code in (404, 422), (body, r.status_code, r.text)
    # three jobs against a limit of two unfinished: refused, and nothing is left made
    three = {"queue": "generation", "payload": {"prompt": "top"}, "children": [
        {"queue": "generation", "payload": {"prompt": "a"}}, {"queue": "generation", "payload": {"prompt": "b"}}]}
    r = c.post("/v1/flows", json=three, headers=alice)
    assert r.status_code in (413, 429), r.text
    assert c.get("/v1/usage", headers=alice).json()["jobsUnfinished"]["used"] == 0
    assert [j for j, _ in _take(redis_url, prefix, "generation", 0.3)] == [bobs]  # only bob's job was ever queued
    # an id already taken: 409, nothing made
    r = c.post("/v1/flows", json=_flow(child_id="bobs-gen"), headers=alice)
    assert r.status_code == 409, r.text
    assert c.get("/v1/usage", headers=alice).json()["jobsUnfinished"]["used"] == 0


def test_cancelling_a_job_whose_failure_fails_its_parent_cancels_the_flow(make_client: Any, tokens: Any,
                                                                         redis_url: str, prefix: str) -> None:
    """Left alone, BullMQ would start the parent as if the child had done its part."""
    c = make_client()
    alice = auth(tokens("alice"))
    flow = c.post("/v1/flows", json=_flow(), headers=alice).json()
    parent, child = flow["job"]["id"], flow["children"][0]["job"]["id"]
    r = c.delete(f"/v1/jobs/{child}", headers=alice)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert c.get(f"/v1/jobs/{parent}", headers=alice).json()["status"] == "cancelled"
    assert _take(redis_url, prefix, "upscaling", 0.3) == [] and _take(redis_url, prefix, "generation", 0.3) == []
    # a deadline to start, or a flow past its size, is refused before anything is made
    dated = {**_flow(child_id="g-dated"), "options": {"startBy": 60}}
    assert c.post("/v1/flows", json=dated, headers=alice).status_code == 422
    wide = {"queue": "generation", "payload": {"prompt": "top"},
            "children": [{"queue": "generation", "payload": {"prompt": str(i)}} for i in range(16)]}
    wide["children"][0]["children"] = [{"queue": "generation", "payload": {"prompt": f"d{i}"}} for i in range(4)]
    r = c.post("/v1/flows", json=wide, headers=alice)  # 21 jobs
    assert r.status_code == 422 and "at most 20 jobs" in r.json()["error"]["message"], r.text
    assert c.get("/v1/usage", headers=alice).json()["jobsUnfinished"]["used"] == 0


def test_the_same_flow_sent_again_answers_what_it_made(make_client: Any, tokens: Any, redis_url: str,
                                                        prefix: str) -> None:
    """A client that lost the answer sends the flow again: one flow, answered twice."""
    c = make_client()
    alice, bob = auth(tokens("alice")), auth(tokens("bob"))
    body = {**_flow(child_id="again-kid"), "options": {"jobId": "again-top"}}
    first = c.post("/v1/flows", json=body, headers=alice)
    second = c.post("/v1/flows", json=body, headers=alice)
    assert first.status_code == 201 and second.status_code == 200, second.text
    assert second.json()["job"]["id"] == "again-top" and second.json()["children"][0]["job"]["id"] == "again-kid"
    assert c.get("/v1/usage", headers=alice).json()["jobsUnfinished"]["used"] == 2
    # another payload under the same ids, or another user sending it: a conflict that shows nothing
    changed = {**body, "payload": {"imageUrl": "job://again-kid/images/0", "scale": 4}}
    assert c.post("/v1/flows", json=changed, headers=alice).status_code == 409
    r = c.post("/v1/flows", json=body, headers=bob)
    assert r.status_code in (409, 422) and "a fox" not in r.text, r.text
    assert [j for j, _ in _take(redis_url, prefix, "generation", 5, result={"images": ["/v1/artifacts/alice/x.png"]})] \
        == ["again-kid"]
    assert _take(redis_url, prefix, "generation", 0.3) == []
