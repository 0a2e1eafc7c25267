"""The gateway app on a real Redis via TestClient: REST, auth, limits, the seed's socket protocol."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from starlette.websockets import WebSocketDisconnect

from dash_ray.models import JobProgressEvent
from dash_ray.queues import (
    JobStore,
    Keys,
    QueueConsumer,
    SyncLifecycle,
    connect,
    connect_sync,
    started_event,
)
from tests.helpers import complete
from tests.redis.conftest import run_async

GEN = {"userId": "alice", "prompt": "a red fox"}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def consumer_on(r: Any, redis_url: str, prefix: str, queue: str) -> Any:
    """A queue's consumer on the client `r` (as a scheduler runs one), for what it writes."""
    return QueueConsumer(r, connect(redis_url, blocking=True), queue, JobStore(r, prefix=prefix, queues=(queue,)).lifecycle,
                         prefix=prefix)


def measured(redis_url: str, prefix: str, queue: str, data: dict[str, Any], seconds: float) -> None:
    """What a queue's consumer writes once its worker ran a job of `data` in `seconds`: the
    costs ETAs read, and one worker standing."""
    from dash_ray.queues import CostBook

    async def report() -> None:
        costs = CostBook()
        costs.measured(queue, data, seconds)
        r = connect(redis_url)
        try:
            await consumer_on(r, redis_url, prefix, queue).board.report_capacity(costs, slots=1, busy=0)
        finally:
            await r.aclose()

    run_async(report())


def run_one(redis_url: str, prefix: str, queue: str, steps: int = 3, result: Any = None, fail: str | None = None) -> str:
    """Take one job as the scheduler does, publish its start and progress as a worker does, then
    complete (or fail) it."""

    async def go() -> str:
        r, b = connect(redis_url), connect(redis_url, blocking=True)
        store = JobStore(r, prefix=prefix, queues=("training", "upscaling", "generation", "sleep"))
        c = QueueConsumer(r, b, queue, store.lifecycle, prefix=prefix)
        [job] = await c.take(block_s=5)
        worker = SyncLifecycle(connect_sync(redis_url), Keys(prefix))
        worker.publish([started_event(job.id, queue, job.user_id, job.attempt, job.attempts)] + [
            JobProgressEvent(job_id=job.id, queue=queue, user_id=job.user_id, status="active",
                             progress=100 * i / steps, message=f"step {i}/{steps}", step=i, steps=steps)
            for i in range(1, steps + 1)])
        worker.redis.close()
        if fail:
            await c.fail(job, fail, retry=False)
        else:
            await complete(c, job, result if result is not None else {"images": ["x.png"]})
        await r.aclose()
        await b.aclose()
        return job.id

    return run_async(go())


def recv_until(ws: Any, pred: Any, limit: int = 50) -> list[dict[str, Any]]:
    got = []
    for _ in range(limit):
        msg = ws.receive_json()
        got.append(msg)
        if pred(msg):
            return got
    raise AssertionError(f"no matching message in {got}")


# ---------------------------------------------------------------- REST


def test_auth_required_and_checked(make_client: Any, tokens: Any) -> None:
    c = make_client()
    assert c.post("/v1/jobs/generation", json=GEN).status_code == 401
    r = c.get("/v1/jobs", headers=auth("not-a-token"))
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    expired = tokens("alice", ttl_s=-10)
    r = c.get("/v1/jobs", headers=auth(expired))
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]
    from dash_ray.gateway import TokenAuth

    forged = TokenAuth("another-secret-0123456789-abcdefghijkl").mint("alice")
    assert c.get("/v1/jobs", headers=auth(forged)).status_code == 401
    assert c.get("/v1/jobs", headers=auth(tokens("alice"))).status_code == 200


def test_submit_idempotent_conflict_and_validation(make_client: Any, tokens: Any) -> None:
    c = make_client()
    h = auth(tokens("alice"))
    r = c.post("/v1/jobs/generation", json={**GEN, "jobId": "g1", "options": {"priority": 1}}, headers=h)
    assert r.status_code == 201
    view = r.json()
    assert view["id"] == "g1" and view["status"] == "waiting" and view["queuePosition"] == 1
    assert view["data"]["userId"] == "alice" and view["priority"] == 1
    assert c.post("/v1/jobs/generation", json={**GEN, "jobId": "g1", "options": {"priority": 1}}, headers=h).status_code == 200
    r = c.post("/v1/jobs/generation", json={**GEN, "prompt": "other", "jobId": "g1"}, headers=h)
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    # userId is filled from the token when absent, and must match it when present
    r = c.post("/v1/jobs/generation", json={"prompt": "no user"}, headers=h)
    assert r.status_code == 201 and r.json()["userId"] == "alice"
    assert c.post("/v1/jobs/generation", json={**GEN, "userId": "mallory"}, headers=h).status_code == 403
    r = c.post("/v1/jobs/generation", json={**GEN, "settings": {"width": 100}}, headers=h)
    assert r.status_code == 422 and "settings.width" in r.json()["error"]["message"]
    r = c.post("/v1/jobs/upscaling", json={"imageUrl": "https://x.y/z.png", "scale": 3}, headers=h)
    assert r.status_code == 422 and "scale" in r.json()["error"]["message"]
    r = c.post("/v1/jobs/generation", json={**GEN, "settings": {"model": "sd99"}}, headers=h)
    assert r.status_code == 422 and "unknown model 'sd99'" in r.json()["error"]["message"]
    r = c.post("/v1/jobs/generation", json={**GEN, "settings": {"loraId": "never-trained"}}, headers=h)
    assert r.status_code == 422 and "settings.loraId" in r.json()["error"]["message"]
    r = c.post("/v1/jobs/painting", json=GEN, headers=h)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_queue"
    r = c.post("/v1/jobs/generation", content=b"{not json", headers={**h, "content-type": "application/json"})
    assert r.status_code == 422
    queues = {q["name"]: q for q in c.get("/v1/queues", headers=h).json()}
    assert queues["generation"]["counts"]["waiting"] == 2
    assert queues["generation"]["concurrency"] == 5 and queues["training"]["concurrency"] == 1


def test_users_only_see_their_own_jobs(make_client: Any, tokens: Any, redis_url: str, prefix: str) -> None:
    c = make_client()
    a, b, admin = auth(tokens("alice")), auth(tokens("bob")), auth(tokens("root", admin=True))
    job = c.post("/v1/jobs/sleep", json={"jobId": "secret", "userId": "alice"}, headers=a).json()
    failed = c.post("/v1/jobs/sleep", json={"jobId": "broken", "userId": "alice"},
                    headers=a).json()
    assert job["id"] == "secret" and failed["id"] == "broken"
    assert c.get("/v1/jobs/secret", headers=a).status_code == 200
    assert c.get("/v1/jobs/secret", headers=b).status_code == 404
    assert c.get("/v1/jobs", headers=b).json()["jobs"] == []
    assert c.get("/v1/jobs?userId=alice", headers=b).status_code == 403
    assert len(c.get("/v1/jobs?userId=alice", headers=admin).json()["jobs"]) == 2
    assert c.delete("/v1/jobs/secret", headers=b).status_code == 404
    run_one(redis_url, prefix, "sleep")  # "secret" completes
    run_one(redis_url, prefix, "sleep", fail="boom")  # "broken" fails
    assert c.post("/v1/jobs/broken/retry", headers=b).status_code == 404
    r = c.post("/v1/jobs/broken/retry", headers=a)
    assert r.status_code == 200 and r.json()["status"] == "waiting"
    assert c.post("/v1/jobs/secret/retry", headers=a).status_code == 409
    r = c.delete("/v1/jobs/broken", headers=a)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert c.get("/v1/jobs/secret", headers=admin).status_code == 200


def test_pause_resume_is_admin_only(make_client: Any, tokens: Any) -> None:
    c = make_client()
    r = c.post("/v1/queues/generation/pause", headers=auth(tokens("alice")))
    assert r.status_code == 403
    r = c.post("/v1/queues/generation/pause", headers=auth(tokens("root", admin=True)))
    assert r.status_code == 200 and r.json()["paused"] is True
    r = c.post("/v1/queues/generation/resume", headers=auth(tokens("root", admin=True)))
    assert r.json()["paused"] is False
    assert c.post("/v1/queues/nope/pause", headers=auth(tokens("root", admin=True))).status_code == 404


def test_rate_limits_return_429_and_enqueue_nothing(make_client: Any, tokens: Any) -> None:
    c = make_client(rate_submit="3/minute")
    h = auth(tokens("alice"))
    for _ in range(3):
        assert c.post("/v1/jobs/generation", json=GEN, headers=h).status_code == 201
    r = c.post("/v1/jobs/generation", json=GEN, headers=h)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert c.get("/v1/queues", headers=h).json()[2]["counts"]["waiting"] == 3
    # another user has their own budget
    assert c.post("/v1/jobs/generation", json={"prompt": "x"}, headers=auth(tokens("bob"))).status_code == 201
    c2 = make_client(max_waiting_per_user=2)
    h2 = auth(tokens("carol"))
    assert [c2.post("/v1/jobs/generation", json={"prompt": "x"}, headers=h2).status_code for _ in range(3)] == [201, 201, 429]


def test_health_metrics_and_docs(make_client: Any, tokens: Any, redis_url: str, prefix: str) -> None:
    c = make_client()
    assert c.get("/healthz").json()["status"] == "ok"
    c.post("/v1/jobs/sleep", json={"userId": "alice"}, headers=auth(tokens("alice")))
    run_one(redis_url, prefix, "sleep")
    text = c.get("/metrics").text
    assert 'dash_jobs{queue="sleep",state="completed"} 1' in text
    assert 'dash_job_duration_seconds_count{queue="sleep"} 1' in text
    assert 'dash_jobs_ended_total{queue="sleep",status="completed"} 1' in text
    assert "dash_ws_open_sockets" in text and "dash_queue_depth" in text
    assert c.get("/docs").status_code == 200
    paths = c.get("/openapi.json").json()["paths"]
    assert {"/v1/jobs/generation", "/v1/jobs/{job_id}", "/v1/queues"} <= set(paths)


def test_artifacts_are_served_to_their_owner_only(make_client: Any, tokens: Any) -> None:
    import os
    import stat

    c = make_client()
    c.services.artifacts.put("alice/job1/image-0.png", b"\x89PNG fake")
    root = c.services.artifacts.root
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700  # private to the server's user
    assert stat.S_IMODE(os.stat(f"{root}/alice/job1/image-0.png").st_mode) == 0o600
    r = c.get("/v1/artifacts/alice/job1/image-0.png", headers=auth(tokens("alice")))
    assert r.status_code == 200 and r.content == b"\x89PNG fake" and r.headers["content-type"] == "image/png"
    assert c.get(f"/v1/artifacts/alice/job1/image-0.png?token={tokens('alice')}").status_code == 200
    assert c.get("/v1/artifacts/alice/job1/image-0.png", headers=auth(tokens("bob"))).status_code == 404
    assert c.get("/v1/artifacts/alice/../etc/passwd", headers=auth(tokens("alice"))).status_code == 404


# ---------------------------------------------------------------- WebSocket


def test_socket_seed_protocol_progress_then_completed(make_client: Any, tokens: Any, redis_url: str, prefix: str) -> None:
    c = make_client()
    h = auth(tokens("alice"))
    job_id = c.post("/v1/jobs/generation", json=GEN, headers=h).json()["id"]
    with c.websocket_connect(f"/ws?token={tokens('alice')}") as ws:
        ws.send_text(json.dumps({"type": "subscribe", "jobIds": [job_id]}))  # the seed's exact message
        first = ws.receive_json()
        assert first["type"] == "job:progress" and first["status"] == "waiting" and first["jobId"] == job_id
        assert ws.receive_json() == {"type": "subscribed", "jobIds": [job_id]}
        run_one(redis_url, prefix, "generation", steps=4)
        got = recv_until(ws, lambda m: m["type"] == "job:completed")
    progress = [m for m in got if m["type"] == "job:progress"]
    assert [m["status"] for m in progress][:1] == ["active"]
    assert [m["progress"] for m in progress if m.get("step")] == [25, 50, 75, 100]
    seqs = [first["seq"]] + [m["seq"] for m in got]
    assert seqs == sorted(set(seqs))
    done = got[-1]
    assert {"jobId", "queue", "result", "seq", "ts"} <= set(done) and done["result"] == {"images": ["x.png"]}
    for m in progress:
        assert {"jobId", "queue", "status", "progress", "message"} <= set(m)


def test_late_subscriber_and_replay_since(make_client: Any, tokens: Any, redis_url: str, prefix: str) -> None:
    c = make_client()
    job_id = c.post("/v1/jobs/generation", json=GEN, headers=auth(tokens("alice"))).json()["id"]
    run_one(redis_url, prefix, "generation", steps=5)
    with c.websocket_connect(f"/ws?token={tokens('alice')}") as ws:
        ws.send_json({"type": "subscribe", "jobIds": [job_id]})
        final = ws.receive_json()
        assert final["type"] == "job:completed" and final["jobId"] == job_id  # at once, no waiting
        assert ws.receive_json()["type"] == "subscribed"
        total = final["seq"]
        ws.send_json({"type": "unsubscribe", "jobIds": [job_id]})
        assert ws.receive_json() == {"type": "subscribed", "jobIds": []}
        ws.send_json({"type": "subscribe", "jobIds": [job_id], "since": {job_id: 3}})
        missed = recv_until(ws, lambda m: m["type"] == "subscribed")[:-1]
    assert [m["seq"] for m in missed] == list(range(4, total + 1))
    assert missed[-1]["type"] == "job:completed"


def test_socket_errors_keep_it_usable(make_client: Any, tokens: Any) -> None:
    c = make_client()
    mine = c.post("/v1/jobs/generation", json=GEN, headers=auth(tokens("alice"))).json()["id"]
    theirs = c.post("/v1/jobs/generation", json={"prompt": "b"}, headers=auth(tokens("bob"))).json()["id"]
    with c.websocket_connect(f"/ws?token={tokens('alice')}") as ws:
        ws.send_text("{not json")
        assert ws.receive_json()["code"] == "bad_json"
        ws.send_json({"type": "dance"})
        assert ws.receive_json()["type"] == "error"
        ws.send_json({"type": "subscribe"})
        err = ws.receive_json()
        assert err["type"] == "error" and "jobIds" in err["message"]
        ws.send_json({"type": "subscribe", "jobIds": [theirs, "missing-job"]})
        e1, e2, ack = ws.receive_json(), ws.receive_json(), ws.receive_json()
        assert e1["code"] == e2["code"] == "not_found" and {e1["jobId"], e2["jobId"]} == {theirs, "missing-job"}
        assert ack == {"type": "subscribed", "jobIds": []}  # no events of bob's job
        ws.send_json({"type": "ping"})
        assert ws.receive_json()["type"] == "pong"
        ws.send_json({"type": "subscribe", "jobIds": [mine]})
        assert ws.receive_json()["jobId"] == mine
        ws.send_text("x" * (64 * 1024 + 1))
        with pytest.raises(WebSocketDisconnect) as info:
            for _ in range(5):
                ws.receive_json()
        assert info.value.code == 1009


def test_socket_needs_a_token(make_client: Any, tokens: Any) -> None:
    c = make_client()
    with c.websocket_connect("/ws") as ws:
        assert ws.receive_json()["code"] == "unauthorized"
        with pytest.raises(WebSocketDisconnect) as info:
            ws.receive_json()
        assert info.value.code == 4401
    with c.websocket_connect("/ws", headers=auth(tokens("alice"))) as ws:
        ws.send_json({"type": "ping"})
        assert ws.receive_json()["type"] == "pong"


def test_two_replicas_share_events_through_redis(make_client: Any, tokens: Any, redis_url: str, prefix: str) -> None:
    one, two = make_client(), make_client()
    job_id = one.post("/v1/jobs/generation", json=GEN, headers=auth(tokens("alice"))).json()["id"]
    with two.websocket_connect(f"/ws?token={tokens('alice')}") as ws:
        ws.send_json({"type": "subscribe", "jobIds": [job_id]})
        recv_until(ws, lambda m: m["type"] == "subscribed")
        t0 = time.time()
        run_one(redis_url, prefix, "generation")
        got = recv_until(ws, lambda m: m["type"] == "job:completed")
    assert got[-1]["jobId"] == job_id and time.time() - t0 < 5


def test_a_socket_catches_up_after_the_gateways_pubsub_connection_drops(
        make_client: Any, tokens: Any, redis_url: str, prefix: str) -> None:
    """Events published while the replica's pub/sub connection is down reach the socket after it
    comes back (from the replay stream), each seq exactly once."""
    import redis as sync_redis

    c = make_client()
    job_id = c.post("/v1/jobs/generation", json=GEN, headers=auth(tokens("alice"))).json()["id"]
    worker = SyncLifecycle(connect_sync(redis_url), Keys(prefix))

    def progress(i: int) -> JobProgressEvent:
        return JobProgressEvent(job_id=job_id, queue="generation", user_id="alice", status="active",
                                progress=i, message=f"step {i}")

    with c.websocket_connect(f"/ws?token={tokens('alice')}") as ws:
        ws.send_json({"type": "subscribe", "jobIds": [job_id]})
        got = recv_until(ws, lambda m: m["type"] == "subscribed")
        worker.publish([progress(i) for i in range(1, 6)])
        got += recv_until(ws, lambda m: m.get("seq") == 6)
        reconnects = c.services.hub.reconnects
        killer = sync_redis.Redis.from_url(redis_url)
        killer.client_kill_filter(_type="pubsub")  # the replica's event feed drops...
        worker.publish([progress(i) for i in range(6, 26)])  # ...and these are published meanwhile
        got += recv_until(ws, lambda m: m.get("seq") == 25, limit=100)
        killer.close()
    worker.redis.close()
    seqs = [m["seq"] for m in got if m["type"].startswith("job:")]
    assert seqs == list(range(1, 26))
    assert c.services.hub.reconnects > reconnects


def test_redis_unreachable_answers_503_with_retry_after(tokens: Any, tmp_path: Any) -> None:
    from fastapi.testclient import TestClient

    from dash_ray.config import load_settings
    from dash_ray.gateway import GatewayServices, create_app
    from tests.redis.conftest import SECRET

    settings = load_settings(token_secret=SECRET, data_dir=tmp_path)
    services = GatewayServices.create(settings, "redis://127.0.0.1:1/0")  # nothing listens there
    with TestClient(create_app(services)) as c:
        h = auth(tokens("alice"))
        for r in (c.post("/v1/jobs/generation", json=GEN, headers=h), c.get("/v1/jobs/some-job", headers=h)):
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "unavailable"
        assert c.get("/healthz").status_code == 503
        with c.websocket_connect(f"/ws?token={tokens('alice')}") as ws:
            ws.send_json({"type": "subscribe", "jobIds": ["some-job"]})
            assert ws.receive_json()["code"] == "unavailable"
            ws.send_json({"type": "ping"})
            assert ws.receive_json()["type"] == "pong"  # the socket stays usable


def test_a_waiting_jobs_place_and_eta_are_refreshed_on_its_socket(make_client: Any, tokens: Any, redis: Any,
                                                                     redis_url: str, prefix: str) -> None:
    """The jobs ahead finish: the socket gets seq-less `job:progress` refreshes of the waiting
    job's place and start time, which shrink; its own events keep their seqs, none repeated."""
    c = make_client(ws_eta_refresh_s=0.2)
    h = auth(tokens("alice"))
    ids = [c.post("/v1/jobs/sleep", json={"durationS": 2}, headers=h).json()["id"] for _ in range(4)]
    measured(redis_url, prefix, "sleep", {"durationS": 2}, 2.0)
    with c.websocket_connect(f"/ws?token={tokens('alice')}") as ws:
        ws.send_json({"type": "subscribe", "jobIds": [ids[-1]]})
        first = ws.receive_json()
        assert first["status"] == "waiting" and first["queuePosition"] == 4 and first["seq"] == 1
        assert first["etaS"] == pytest.approx(6.0, abs=0.5) and first["finishEtaS"] == pytest.approx(8.0, abs=0.5)
        assert ws.receive_json()["type"] == "subscribed"
        places = []
        for _ in range(3):  # the jobs ahead run and finish, one by one
            run_one(redis_url, prefix, "sleep")
            m = recv_until(ws, lambda m: m["type"] == "job:progress")[-1]
            assert "seq" not in m and m["status"] == "waiting", m
            places.append((m["queuePosition"], m["etaS"]))
        run_one(redis_url, prefix, "sleep")
        got = recv_until(ws, lambda m: m["type"] == "job:completed")
    assert [p for p, _ in places] == [3, 2, 1]
    assert [e for _, e in places] == sorted((e for _, e in places), reverse=True) and places[-1][1] < 1
    seqs = [m["seq"] for m in got if "seq" in m]
    assert seqs == sorted(set(seqs)) and seqs[0] > first["seq"]
    assert all(m["status"] != "waiting" for m in got if "seq" in m and m["type"] == "job:progress")


def test_a_waiting_job_of_a_shape_never_run_gets_its_eta_from_its_models_cost_per_step_and_megapixel(
        make_client: Any, tokens: Any, redis_url: str, prefix: str) -> None:
    """One 150-step 256 px generation measured (0.1 s a step); a backlog of 40-step 128 px jobs,
    a shape never run: the 15th starts after 14 jobs of 40 steps at a quarter of the pixels,
    about 1 s each (not 4 s, the queue's mean per step), and says so."""
    c = make_client()
    h = auth(tokens("alice"))
    measured(redis_url, prefix, "generation", {"settings": {"width": 256, "height": 256, "steps": 150}}, 15.0)
    body = {"prompt": "a fox", "settings": {"width": 128, "height": 128, "steps": 40}}
    ids = [c.post("/v1/jobs/generation", json=body, headers=h).json()["id"] for _ in range(15)]
    view = c.get(f"/v1/jobs/{ids[-1]}", headers=h).json()
    assert view["queuePosition"] == 15
    assert view["etaS"] == pytest.approx(14.0, abs=0.5) and view["finishEtaS"] == pytest.approx(15.0, abs=0.5)


def test_queues_show_the_gpu_fraction_chosen_and_the_measured_peaks(make_client: Any, tokens: Any,
                                                                    redis_url: str, prefix: str) -> None:
    from dash_ray.queues import CostBook

    c = make_client()

    async def report() -> None:  # what the generation consumer writes once its workers measured jobs
        r = connect(redis_url)
        consumer = QueueConsumer(r, connect(redis_url, blocking=True), "generation",
                                 JobStore(r, prefix=prefix, queues=("generation",)).lifecycle, prefix=prefix)
        await consumer.board.report_capacity(CostBook(), 2, 0, gpu_fraction=0.05,
                                       memory={"sd15:512x512": ("cuda", 3 * 1024**3)})
        await r.aclose()

    run_async(report())
    queues = {q["name"]: q for q in c.get("/v1/queues", headers=auth(tokens("alice"))).json()}
    gen = queues["generation"]
    assert gen["gpuFraction"] == 0.05 and gen["configuredGpuFraction"] == 0.2
    assert gen["memoryPeaks"] == {"sd15:512x512": {"kind": "cuda", "bytes": 3 * 1024**3}}
    assert queues["training"]["gpuFraction"] == queues["training"]["configuredGpuFraction"] == 1.0
    assert queues["training"]["memoryPeaks"] == {}
    assert 'dash_worker_gpu_fraction{queue="generation"} 0.05' in c.get("/metrics").text


async def test_the_cold_start_tally_round_trips_through_redis_into_the_metrics_text(redis: Any, prefix: str) -> None:
    from dash_ray.gateway.metrics import ReplicaMetrics, render
    from dash_ray.queues import CostBook
    from dash_ray.queues.board import CapacityBoard, cold_starts

    keys = Keys(prefix)
    board = CapacityBoard(redis, "generation", keys)
    tally = {"readyS": {"count": 3, "sum": 21.5, "max": 9.25}, "importS": {"count": 3, "sum": 6.0, "max": 2.5}}
    await board.report_capacity(CostBook(), 2, 1, cold=tally)
    got = await cold_starts(redis, keys, ["generation", "training"])
    assert got == {"generation": tally, "training": {}}
    assert (await board.capacities(["generation"]))["generation"]["slots"] == "2"  # peers read it as before
    text = render({"generation": {"waiting": 0}}, {}, ReplicaMetrics("r1"), cold=got)
    assert 'dash_worker_cold_start_seconds_count{queue="generation",phase="readyS"} 3' in text
    assert 'dash_worker_cold_start_max_seconds{queue="generation",phase="importS"} 2.5' in text


def test_a_tokens_weight_claim_is_checked(make_client: Any, tokens: Any) -> None:
    """A token's fair-share weight must be a number within 0.01 and 100: anything else is 401,
    however the token was signed; a good one is taken."""
    import jwt

    from tests.redis.conftest import SECRET

    c = make_client()
    now = int(time.time())
    for bad in (1e9, 0, "2", True, [2]):
        token = jwt.encode({"sub": "w", "iat": now, "exp": now + 600, "weight": bad}, SECRET, algorithm="HS256")
        r = c.post("/v1/jobs/sleep", json={"durationS": 0}, headers=auth(token))
        assert r.status_code == 401 and "weight" in r.text, (bad, r.text)
    from dash_ray.gateway import TokenAuth

    good = TokenAuth(SECRET).mint("w", weight=2.5)
    assert c.post("/v1/jobs/sleep", json={"durationS": 0}, headers=auth(good)).status_code == 201
    with pytest.raises(ValueError, match="weight"):
        TokenAuth(SECRET).mint("w", weight=500)


def test_the_submit_fast_path_answers_as_the_route_does(make_client: Any, tokens: Any) -> None:
    """The edge serves submits itself (one JSON parse, no router): every answer, good or bad, is
    the one FastAPI's route gives for the same request."""
    from dash_ray.gateway.app import _Edge

    fast, routed = make_client(), make_client()
    layer = routed.app.middleware_stack
    while not isinstance(layer, _Edge):
        layer = layer.app
    layer.submits = {}  # this app's submits go through FastAPI's route
    h = auth(tokens("alice"))
    bodies: list[Any] = [
        {"prompt": "a red fox", "jobId": "same-1"},
        {"prompt": "a red fox", "jobId": "same-1"},  # the replay: 200
        {"prompt": "another", "jobId": "same-1"},  # 409
        {"prompt": ""}, {"prompt": "x", "settings": {"steps": 0}}, {"prompt": "x", "nope": 1},
        {"prompt": "x", "options": {"priority": 9}}, {"prompt": "x", "options": {"attempts": "many"}},
        {"prompt": "x", "userId": "bob"}, {"prompt": "x", "settings": {"model": "no-such-model"}},
        [], "x", 3, None,
    ]
    for body in bodies:
        answers = [c.post("/v1/jobs/generation", headers=h,  # one store: each side its own id
                          json={**body, "jobId": f"{body['jobId']}-{k}"} if isinstance(body, dict) and "jobId" in body
                          else body) for k, c in enumerate((fast, routed))]
        assert answers[0].status_code == answers[1].status_code, (body, [a.text for a in answers])
        a, b = (r.json() for r in answers)
        if answers[0].status_code >= 400:
            assert a["error"]["code"] == b["error"]["code"], (body, a, b)
            fields = [{e["field"] for e in x["error"].get("errors", [])} for x in (a, b)]
            assert fields[0] == fields[1], (body, a, b)
        else:
            assert a.keys() == b.keys() and a["status"] == b["status"] == "waiting"
    for raw in (b"", b"{not json", b'{"prompt": "x"', "{\"prompt\": \"caf\u00e9\"}".encode()):
        answers = [c.post("/v1/jobs/generation", content=raw, headers={**h, "Content-Type": "application/json"})
                   for c in (fast, routed)]
        assert answers[0].status_code == answers[1].status_code, (raw, [a.text for a in answers])
    # a body the edge does not read as JSON goes to the route
    r = fast.post("/v1/jobs/generation", content=b"prompt=x", headers={**h, "Content-Type": "text/plain"})
    assert r.status_code == 422


def test_a_deadline_to_start_through_the_api(make_client: Any, tokens: Any, redis_url: str, prefix: str) -> None:
    """`options.startBy` in seconds or as a time is taken; one that cannot be met, or is not a
    deadline, is 422 naming the field; the job's view says `expired` once it lapsed unrun."""
    c = make_client()
    h = auth(tokens("alice"))
    ok = c.post("/v1/jobs/sleep", json={"durationS": 1, "options": {"startBy": 0.2}}, headers=h)
    assert ok.status_code == 201, ok.text
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 600))
    assert c.post("/v1/jobs/sleep", json={"options": {"startBy": later}}, headers=h).status_code == 201
    for bad in ("2020-01-01T00:00:00Z", "soon", -5, 10**9, "30", True, "9999-12-31T23:59:59Z"):
        r = c.post("/v1/jobs/sleep", json={"options": {"startBy": bad}}, headers=h)
        assert r.status_code == 422 and "startBy" in r.json()["error"]["message"], (bad, r.text)
    job_id = ok.json()["id"]

    async def sweep() -> int:  # what the queue's consumer does every second
        r = connect(redis_url)
        try:
            return int(await consumer_on(r, redis_url, prefix, "sleep").expire_overdue())
        finally:
            await r.aclose()

    deadline = time.time() + 10
    while c.get(f"/v1/jobs/{job_id}", headers=h).json()["status"] != "expired":
        assert time.time() < deadline
        run_async(sweep())
    view = c.get(f"/v1/jobs/{job_id}", headers=h).json()
    assert view["error"].startswith("expired: not started by its deadline")
    assert 'dash_jobs_ended_total{queue="sleep",status="expired"} 1' in c.get("/metrics").text
