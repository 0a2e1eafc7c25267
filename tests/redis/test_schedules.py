"""Schedules (`/v1/schedules`, BullMQ's job schedulers) on a real Redis: the jobs a schedule
makes are taken as the scheduler takes them, each making the next; deleting one stops it; a
user's schedules are theirs alone; the per-user cap holds under concurrent posts."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

from dash_ray.queues import JobStore, QueueConsumer, connect
from tests.helpers import complete
from tests.redis.conftest import run_async
from tests.redis.test_gateway import auth

QUEUES = ("training", "upscaling", "generation", "sleep")
TICK = {"name": "tick", "queue": "sleep", "every": 2, "payload": {"durationS": 0.01}}


def _take_all(redis_url: str, prefix: str, seconds: float, most: int = 10) -> list[tuple[str, float, Any]]:
    """The jobs the sleep queue's consumer takes within `seconds` (completing each at once, as a
    worker would): (id, when taken, its data)."""

    async def go() -> list[tuple[str, float, Any]]:
        r, b = connect(redis_url), connect(redis_url, blocking=True)
        c = QueueConsumer(r, b, "sleep", JobStore(r, prefix=prefix, queues=QUEUES).lifecycle, prefix=prefix)
        out: list[tuple[str, float, Any]] = []
        end = time.monotonic() + seconds
        try:
            while len(out) < most and (left := end - time.monotonic()) > 0:
                for job in await c.take(block_s=left):
                    out.append((job.id, time.monotonic(), job.data))
                    await complete(c, job, {"ok": True})
            await c.next_runs_made()
            await c.adoption.adopt()  # (the upkeep's) into the owner's history
        finally:
            await r.aclose()
            await b.aclose()
        return out

    return run_async(go())


def test_a_schedule_every_2_s_makes_a_job_each_time_and_stops_when_deleted(
        make_client: Any, tokens: Any, redis_url: str, prefix: str) -> None:
    c = make_client(enable_sleep_queue=True, schedule_min_every_s=1)
    alice = auth(tokens("alice"))
    r = c.post("/v1/schedules", json=TICK, headers=alice)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["id"] == "alice.tick" and made["every"] == 2 and made["userId"] == "alice" and made["nextAt"]
    taken = _take_all(redis_url, prefix, 7.0, most=3)
    assert len(taken) == 3, taken
    ids = [t[0] for t in taken]
    assert all(i.startswith("repeat:alice.tick:") for i in ids)
    gaps = [b[1] - a[1] for a, b in itertools.pairwise(taken)]
    assert all(1.5 < g < 3.5 for g in gaps), gaps  # every 2 s
    assert all(t[2]["userId"] == "alice" and t[2]["durationS"] == 0.01 for t in taken)
    # each run is one of alice's jobs, in her history, readable by its id
    view = c.get(f"/v1/jobs/{ids[0]}", headers=alice).json()
    assert view["status"] == "completed" and view["userId"] == "alice", view
    history = [j["id"] for j in c.get("/v1/jobs", params={"queue": "sleep"}, headers=alice).json()["jobs"]]
    assert set(ids) <= set(history)
    listed = c.get("/v1/schedules", headers=alice).json()
    assert [s["name"] for s in listed] == ["tick"] and listed[0]["runs"] >= 3
    r = c.delete("/v1/schedules/tick", headers=alice)
    assert r.status_code == 200 and r.json()["name"] == "tick", r.text
    assert _take_all(redis_url, prefix, 3.0) == []  # no more runs
    assert c.get("/v1/schedules", headers=alice).json() == []
    assert c.delete("/v1/schedules/tick", headers=alice).status_code == 404


def test_schedules_are_their_owners_and_bad_ones_are_refused(make_client: Any, tokens: Any) -> None:
    c = make_client(enable_sleep_queue=True)
    alice, bob, root = auth(tokens("alice")), auth(tokens("bob")), auth(tokens("root", admin=True))
    assert c.post("/v1/schedules", json={**TICK, "every": 3600}, headers=alice).status_code == 201
    assert c.post("/v1/schedules", json={**TICK, "every": 7200}, headers=alice).status_code == 200  # replaced
    assert c.post("/v1/schedules", json={**TICK, "every": 3600}, headers=bob).status_code == 201  # his own "tick"
    mine = c.get("/v1/schedules", headers=alice).json()
    assert [(s["id"], s["every"]) for s in mine] == [("alice.tick", 7200)]
    assert c.get("/v1/schedules", params={"userId": "alice"}, headers=bob).status_code == 403
    assert c.get("/v1/schedules", params={"userId": "*"}, headers=bob).status_code == 403
    assert {s["id"] for s in c.get("/v1/schedules", params={"userId": "*"}, headers=root).json()} == {
        "alice.tick", "bob.tick"}
    assert c.delete("/v1/schedules/tick", params={"userId": "alice"}, headers=bob).status_code == 403
    assert c.delete("/v1/schedules/tick", headers=bob).status_code == 200  # his, not hers
    assert [s["id"] for s in c.get("/v1/schedules", headers=alice).json()] == ["alice.tick"]
    cron = {"name": "nightly", "queue": "sleep", "cron": "0 3 * * *", "tz": "Europe/Paris", "payload": {}}
    r = c.post("/v1/schedules", json=cron, headers=alice)
    assert r.status_code == 201 and r.json()["cron"] == "0 3 * * *" and r.json()["nextAt"] > time.time(), r.text
    for bad in ({**TICK, "every": 0.5}, {**TICK, "every": None}, {**TICK, "cron": "* * * * *"},
                {**cron, "cron": "61 * * * *"}, {**cron, "tz": "Mars/Olympus"}, {**TICK, "name": "a.b"},
                {**TICK, "queue": "training"}, {**TICK, "queue": "nope"}, {**TICK, "payload": {"durationS": -1}},
                {**TICK, "payload": {"jobId": "fixed"}}, {**TICK, "options": {"jobId": "x"}}):
        r = c.post("/v1/schedules", json=bad, headers=alice)
        assert r.status_code in (404, 422), (bad, r.status_code, r.text)
    r = c.post("/v1/schedules", json={**TICK, "payload": {"userId": "bob"}}, headers=alice)
    assert r.status_code == 403, r.text


def test_the_per_user_cap_holds_under_concurrent_posts(make_client: Any, tokens: Any) -> None:
    c = make_client(enable_sleep_queue=True, max_schedules_per_user=3)
    alice = auth(tokens("alice"))
    codes: list[int] = []
    gate = threading.Barrier(8)

    def post(i: int) -> None:
        gate.wait()
        codes.append(c.post("/v1/schedules", json={**TICK, "name": f"s{i}", "every": 3600}, headers=alice).status_code)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [201] * codes.count(201) + [429] * codes.count(429) and codes.count(201) <= 3
    assert len(c.get("/v1/schedules", headers=alice).json()) == codes.count(201)


def test_a_node_upsert_job_scheduler_makes_jobs_dash_ray_runs(make_client: Any, tokens: Any, redis_url: str,
                                                              prefix: str) -> None:
    """Node BullMQ (npm `bullmq`) schedules a recurring job on a dash-ray queue: dash-ray's
    consumer runs each run and makes the next (as Node's own workers would), the runs are the
    user's jobs, and the admins see the Node scheduler among the schedules."""
    import json
    import os
    import shutil
    import subprocess
    from pathlib import Path

    import pytest

    root = Path(__file__).resolve().parents[2]
    if not (root / "clients/js/node_modules/bullmq").exists() or not shutil.which("node"):
        if os.environ.get("DASH_REQUIRE_BROWSER"):
            pytest.fail("Node BullMQ is not installed: npm ci --prefix clients/js")
        pytest.skip("Node BullMQ is not installed: npm ci --prefix clients/js (.ci/run does)")
    c = make_client(enable_sleep_queue=True)
    node = subprocess.Popen(["node", str(root / "clients/js/interop/job-scheduler.mjs"), redis_url, prefix, "sleep",
                             "node-every-second", "1000", json.dumps({"userId": "node-user", "durationS": 0.01})],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert node.stdout is not None and node.stdin is not None
        line = node.stdout.readline()
        assert json.loads(line or "{}").get("ready"), (line, node.stderr.read() if node.stderr else "")
        taken = _take_all(redis_url, prefix, 6.0, most=3)
        listed = c.get("/v1/schedules", params={"userId": "*"}, headers=auth(tokens("root", admin=True))).json()
        node.stdin.write("stop\n")
        node.stdin.flush()
        assert json.loads(node.stdout.readline())["removed"] in (True, 1)
    finally:
        if node.poll() is None:
            node.kill()
        node.wait(10)
    assert len(taken) == 3 and all(t[0].startswith("repeat:node-every-second:") for t in taken), taken
    assert len({t[0] for t in taken}) == 3
    assert [s["id"] for s in listed] == ["node-every-second"] and listed[0]["userId"] == "node-user"
    view = c.get(f"/v1/jobs/{taken[0][0]}", headers=auth(tokens("node-user"))).json()
    assert view["status"] == "completed" and view["userId"] == "node-user", view


def test_racing_posts_of_one_name_on_two_queues_leave_one_schedule_and_delete_removes_it(
        make_client: Any, tokens: Any, redis_url: str, prefix: str) -> None:
    c = make_client(enable_sleep_queue=True)
    alice = auth(tokens("alice"))
    gate = threading.Barrier(2)
    codes: list[int] = []
    bodies = [{**TICK, "every": 3600}, {**TICK, "every": 3600, "queue": "generation", "payload": {"prompt": "p"}}]

    def post(body: dict[str, Any]) -> None:
        gate.wait()
        codes.append(c.post("/v1/schedules", json=body, headers=alice).status_code)

    threads = [threading.Thread(target=post, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200, 201], codes
    everyone = c.get("/v1/schedules", params={"userId": "*"}, headers=auth(tokens("root", admin=True))).json()
    assert [s["id"] for s in everyone] == ["alice.tick"]  # on one queue only
    assert c.delete("/v1/schedules/tick", headers=alice).status_code == 200
    assert c.get("/v1/schedules", params={"userId": "*"}, headers=auth(tokens("root", admin=True))).json() == []


def test_a_users_schedules_together_stay_within_their_submission_rate(make_client: Any, tokens: Any) -> None:
    c = make_client(enable_sleep_queue=True, rate_submit="60/minute")
    alice = auth(tokens("alice"))
    assert c.post("/v1/schedules", json={**TICK, "name": "a", "every": 2}, headers=alice).status_code == 201  # 30/min
    assert c.post("/v1/schedules", json={**TICK, "name": "b", "every": 4}, headers=alice).status_code == 201  # +15
    r = c.post("/v1/schedules", json={**TICK, "name": "c", "every": 2}, headers=alice)  # +30: over 60
    assert r.status_code == 422 and "submission rate" in r.json()["error"]["message"], r.text
    r = c.post("/v1/schedules", json={**TICK, "name": "c", "cron": "*/2 * * * * *"}, headers=alice)  # every 2 s
    assert r.status_code == 422, r.text
    assert c.post("/v1/schedules", json={**TICK, "name": "a", "every": 4}, headers=alice).status_code == 200
    assert c.post("/v1/schedules", json={**TICK, "name": "c", "every": 4}, headers=alice).status_code == 201
    long_user = auth(tokens("u" * 120))
    r = c.post("/v1/schedules", json={**TICK, "name": "n" * 40}, headers=long_user)
    assert r.status_code == 422 and r.json()["error"]["errors"][0]["field"] == "name", r.text


def test_a_schedules_waiting_run_ends_cancelled_when_it_is_deleted_and_cannot_be_cancelled_alone(
        make_client: Any, tokens: Any, redis_url: str, prefix: str) -> None:
    c = make_client(enable_sleep_queue=True)
    alice = auth(tokens("alice"))
    assert c.post("/v1/schedules", json={**TICK, "every": 3600}, headers=alice).status_code == 201
    _take_all(redis_url, prefix, 5.0, most=1)  # the first run; the next waits an hour (adopted: alice's)
    pending = [j for j in c.get("/v1/jobs", params={"queue": "sleep"}, headers=alice).json()["jobs"]
               if j["status"] == "delayed"]
    assert len(pending) == 1, pending
    run = pending[0]["id"]
    r = c.delete(f"/v1/jobs/{run}", headers=alice)
    assert r.status_code == 409 and "schedule" in r.json()["error"]["message"], r.text
    assert c.delete("/v1/schedules/tick", headers=alice).status_code == 200
    view = c.get(f"/v1/jobs/{run}", headers=alice).json()
    assert view["status"] == "cancelled" and "schedule" in view["error"], view
    assert c.get("/v1/usage", headers=alice).json()["jobsUnfinished"]["used"] == 0
