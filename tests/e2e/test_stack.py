"""End to end through Serve's proxy: REST submit, the seed's socket protocol, replicas sharing events."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from websockets.sync.client import connect


def h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def recv_until(ws: Any, pred: Any, timeout_s: float = 60) -> list[dict[str, Any]]:
    got = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = json.loads(ws.recv(timeout=deadline - time.monotonic()))
        got.append(msg)
        if pred(msg):
            return got
    raise AssertionError(f"timed out; got {got}")


def test_submit_subscribe_progress_then_completed(stack: dict[str, Any]) -> None:
    tok = stack["token"]("alice")
    r = httpx.post(f"{stack['base']}/v1/jobs/sleep", json={"durationS": 1.5, "steps": 5}, headers=h(tok), timeout=10)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    with connect(f"{stack['ws']}?token={tok}") as ws:
        ws.send(json.dumps({"type": "subscribe", "jobIds": [job_id]}))
        got = recv_until(ws, lambda m: m["type"] == "job:completed")
    events = [m for m in got if m["type"].startswith("job:")]
    seqs = [m["seq"] for m in events]
    assert seqs == sorted(set(seqs))
    steps = [m["progress"] for m in events if m.get("step")]
    assert steps == sorted(steps) and steps[-1] == 100
    assert events[-1]["type"] == "job:completed" and events[-1]["result"]["attempt"] == 1
    assert sum(m["type"] in ("job:completed", "job:failed") for m in events) == 1


def test_late_subscriber_and_reconnect_with_since(stack: dict[str, Any]) -> None:
    tok = stack["token"]("alice")
    job_id = httpx.post(f"{stack['base']}/v1/jobs/sleep", json={"durationS": 0.6, "steps": 6},
                        headers=h(tok), timeout=10).json()["id"]
    with connect(f"{stack['ws']}?token={tok}") as ws:
        ws.send(json.dumps({"type": "subscribe", "jobIds": [job_id]}))
        first = recv_until(ws, lambda m: m.get("seq", 0) >= 3)  # see a few, then "drop the connection"
    seen = max(m["seq"] for m in first if "seq" in m)
    deadline = time.monotonic() + 60
    while httpx.get(f"{stack['base']}/v1/jobs/{job_id}", headers=h(tok), timeout=10).json()["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    with connect(f"{stack['ws']}?token={tok}") as ws:  # a late subscriber gets the final state at once
        ws.send(json.dumps({"type": "subscribe", "jobIds": [job_id]}))
        final = json.loads(ws.recv(timeout=10))
        assert final["type"] == "job:completed"
    with connect(f"{stack['ws']}?token={tok}") as ws:  # reconnect with since: exactly what was missed
        ws.send(json.dumps({"type": "subscribe", "jobIds": [job_id], "since": {job_id: seen}}))
        missed = recv_until(ws, lambda m: m["type"] == "subscribed", 10)[:-1]
    assert [m["seq"] for m in missed] == list(range(seen + 1, final["seq"] + 1))


def test_a_socket_on_one_replica_gets_events_of_a_job_submitted_on_another(stack: dict[str, Any]) -> None:
    tok = stack["token"]("alice")
    with connect(f"{stack['ws']}?token={tok}") as ws:
        ws.send(json.dumps({"type": "ping"}))
        sock_replica = json.loads(ws.recv(timeout=10))["replica"]
        # submit until the REST call lands on the other replica
        for _ in range(50):
            r = httpx.post(f"{stack['base']}/v1/jobs/sleep", json={"durationS": 0.3}, headers=h(tok), timeout=10)
            if r.headers["x-dash-replica"] != sock_replica:
                break
        else:
            raise AssertionError("all requests went to one replica")
        job_id = r.json()["id"]
        ws.send(json.dumps({"type": "subscribe", "jobIds": [job_id]}))
        got = recv_until(ws, lambda m: m["type"] == "job:completed")
    assert got[-1]["jobId"] == job_id


def test_security_through_the_proxy(stack: dict[str, Any]) -> None:
    base = stack["base"]
    assert httpx.get(f"{base}/v1/jobs", timeout=10).status_code == 401
    a, b = stack["token"]("alice"), stack["token"]("bob")
    job_id = httpx.post(f"{base}/v1/jobs/sleep", json={"durationS": 0}, headers=h(a), timeout=10).json()["id"]
    assert httpx.get(f"{base}/v1/jobs/{job_id}", headers=h(b), timeout=10).status_code == 404
    assert httpx.post(f"{base}/v1/queues/sleep/pause", headers=h(b), timeout=10).status_code == 403
    with connect(f"{stack['ws']}?token={b}") as ws:
        ws.send(json.dumps({"type": "subscribe", "jobIds": [job_id]}))
        err = json.loads(ws.recv(timeout=10))
        assert err["type"] == "error" and err["code"] == "not_found"
        assert json.loads(ws.recv(timeout=10)) == {"type": "subscribed", "jobIds": []}
