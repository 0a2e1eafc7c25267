"""WorkerCore without Ray, on a real Redis: a batch of jobs on one worker."""

from __future__ import annotations

import threading
import time
from typing import Any

from dash_ray.config import load_settings
from dash_ray.scheduler import RunnerSpec
from dash_ray.scheduler.worker import WorkerCore


def job(job_id: str, **data: Any) -> dict[str, Any]:
    return {"id": job_id, "queue": "sleep", "data": {"userId": "alice", **data}, "attempt": 1, "attempts": 1}


def make_core(redis_url: str, prefix: str) -> WorkerCore:
    settings = load_settings(key_prefix=prefix)
    return WorkerCore("sleep", settings, RunnerSpec("dash_ray.scheduler.sleep:SleepRunner"), redis_url)


def test_batch_runs_in_order_and_a_later_job_can_be_cancelled_before_it_starts(redis_url: str, prefix: str) -> None:
    core = make_core(redis_url, prefix)
    try:
        out: list[Any] = []
        t = threading.Thread(target=lambda: out.extend(core.run_batch(
            [job("a", durationS=0.4, steps=2), job("b"), job("c")])))
        t.start()
        deadline = time.monotonic() + 5
        while "b" not in core.info()["running"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert core.cancel("b")  # b is waiting behind a: its cancel is kept for when it starts
        t.join(10)
        assert [o["ok"] for o in out] == [True, False, True]
        assert out[1]["cancelled"] and out[1]["error"] == "cancelled"
        assert all(o["s"] >= 0 for o in out) and out[0]["s"] >= 0.35
        assert core.info()["running"] == []
        assert not core.cancel("c")  # finished: nothing to cancel
    finally:
        core.close()


def test_batch_past_its_budget_hands_back_the_jobs_it_did_not_start(redis_url: str, prefix: str) -> None:
    core = make_core(redis_url, prefix)
    try:
        out = core.run_batch([job("slow", durationS=0.2), job("x"), job("y")], budget_s=0.05)
        assert out[0]["ok"] and out[1:] == [{"ok": False, "skipped": True}] * 2
        out = core.run_batch([job("p"), job("q")], budget_s=0.05)
        assert [o["ok"] for o in out] == [True, True]
    finally:
        core.close()
