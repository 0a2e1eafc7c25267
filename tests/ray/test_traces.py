"""Traces from the outside: one job submitted through the gateway gives one connected trace whose
spans come from three processes (the gateway here, the queue's consumer actor and its worker
actor), as each appends its finished spans to DASH_TRACE_FILE: the run's phases under the
worker's run, its webhook's delivery (to a receiver on loopback) under the submit; with tracing
off, a job carries no trace context."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from dash_ray import tracing
from tests.helpers import WebhookReceiver

pytestmark = pytest.mark.once  # what crosses the processes does not depend on the Redis server

SECRET = "trace-secret-0123456789abcdef-012345"


def _until(check: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {check}")


def _spans(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:  # (a line being written by another process)
            continue
    return out


@pytest.fixture(autouse=True)
def _tracing_off_around(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Each test starts and ends with this process's tracing off, whatever the environment says."""
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "DASH_TRACE_FILE"):
        monkeypatch.delenv(name, raising=False)
    tracing.shutdown()
    yield
    tracing.shutdown()


def test_one_job_gives_one_trace_across_gateway_consumer_and_worker(make_scheduler: Any, redis_url: str, prefix: str,
                                                                    tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from dash_ray.config import load_settings
    from dash_ray.gateway import GatewayServices, TokenAuth, create_app

    path = tmp_path / "spans.jsonl"
    make_scheduler(trace_file=str(path))
    settings = load_settings(key_prefix=prefix, token_secret=SECRET, data_dir=tmp_path / "data",
                             trace_file=str(path), webhook_allowed_networks="127.0.0.0/8")
    services = GatewayServices.create(settings, redis_url, queues=("sleep",))
    auth = {"Authorization": f"Bearer {TokenAuth(SECRET).mint('tracer')}"}
    try:
        with TestClient(create_app(services)) as c, WebhookReceiver() as rx:
            job = c.post("/v1/jobs/sleep", json={"durationS": 0.2, "steps": 2, "options": {"webhook": {"url": rx.url}}},
                         headers=auth).json()["id"]
            _until(lambda: c.get(f"/v1/jobs/{job}", headers=auth).json()["status"] == "completed", 180)
            # the consumer's dispatch span is written once the outcome is: the last of the three
            _until(lambda: any(s["name"] == "write sleep" and s["attributes"].get("dash.job_id") == job
                               for s in _spans(path)), 30)
            rx.wait(lambda got: any(status == 200 for _, _, status in got))
            # the delivery's span is written once the receiver's answer is in
            _until(lambda: any(s["name"] == "webhook job:completed" and s["attributes"].get("dash.job_id") == job
                               for s in _spans(path)), 30)
    finally:
        tracing.shutdown()
    spans = _spans(path)
    [root] = [s for s in spans if s["name"] == "submit sleep" and s["attributes"].get("dash.job_id") == job]
    trace = [s for s in spans if s["trace_id"] == root["trace_id"]]
    assert {s["name"] for s in trace} >= {"submit sleep", "create sleep", "wait sleep", "dispatch sleep", "write sleep",
                                          "run sleep", "phase steps", "webhook job:completed"}, trace
    assert {s["service"] for s in trace} == {"dash-ray-gateway", "dash-ray-consumer-sleep", "dash-ray-worker-sleep"}
    assert len({s["pid"] for s in trace}) == 3  # three processes
    ids = {s["span_id"] for s in trace}
    assert [s for s in trace if s["parent_id"] is None] == [root]  # one root: the submit
    assert all(s["parent_id"] in ids for s in trace if s is not root)  # every other span hangs from it
    run = next(s for s in trace if s["name"] == "run sleep")
    wait = next(s for s in trace if s["name"] == "wait sleep")
    # (BullMQ's timestamp, the wait's start, is in whole milliseconds)
    assert root["start"] - 0.002 <= wait["start"] <= wait["end"] <= run["start"] + 0.5
    assert run["end"] - run["start"] >= 0.2
    # the run's phases: the sleep runner's `step 1/2`, `step 2/2` are one `steps` phase, the whole run
    [phase] = [s for s in trace if s["parent_id"] == run["span_id"] and s["name"].startswith("phase ")]
    assert phase["name"] == "phase steps" and phase["attributes"]["dash.message"] == "step 1/2"
    assert abs(phase["start"] - run["start"]) < 0.001 and abs(phase["end"] - run["end"]) < 0.001
    # the webhook's one try: a call out, under the submit (the carrier the job carries), answered 200
    [hook] = [s for s in trace if s["name"].startswith("webhook ")]
    assert hook["kind"] == "CLIENT" and hook["parent_id"] == root["span_id"] and hook["status"] == "UNSET"
    assert {k: hook["attributes"].get(k) for k in ("dash.job_id", "dash.attempt", "dash.delivered",
                                                   "http.response.status_code")} == {
        "dash.job_id": job, "dash.attempt": 1, "dash.delivered": True, "http.response.status_code": 200}
    assert run["end"] - 0.01 <= hook["start"] <= hook["end"]  # sent once the job had completed


async def test_with_tracing_off_a_job_carries_no_context(make_store: Any) -> None:
    assert tracing.tracer() is None
    store = make_store()
    view = (await store.add("sleep", {"userId": "u", "durationS": 0.1})).job
    assert "tm" not in json.loads(await store.redis.hget(store.keys.bull("sleep", view.id), "opts"))
