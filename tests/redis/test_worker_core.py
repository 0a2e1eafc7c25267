"""WorkerCore without Ray, on a real Redis: a batch of jobs on one worker."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from dash_ray.config import load_settings
from dash_ray.scheduler import JobContext, Outcome, RunnerSpec
from dash_ray.scheduler.worker import WorkerCore


def job(job_id: str, **data: Any) -> JobContext:
    return JobContext(id=job_id, queue="sleep", data={"userId": "alice", **data}, user_id="alice")


def make_core(redis_url: str, prefix: str) -> WorkerCore:
    settings = load_settings(key_prefix=prefix)
    return WorkerCore("sleep", settings, RunnerSpec("dash_ray.scheduler.sleep:SleepRunner"), redis_url)


def test_batch_runs_in_order_and_a_later_job_can_be_cancelled_before_it_starts(redis_url: str, prefix: str) -> None:
    core = make_core(redis_url, prefix)
    try:
        out: list[Outcome] = []
        t = threading.Thread(target=lambda: out.extend(core.run_batch(
            [job("a", durationS=0.4, steps=2), job("b"), job("c")]).outcomes))
        t.start()
        deadline = time.monotonic() + 5
        while "b" not in core.info()["running"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert core.cancel("b")  # b is waiting behind a: its cancel is kept for when it starts
        t.join(10)
        assert [o.kind for o in out] == ["done", "cancelled", "done"]
        assert out[1].error == "cancelled" and not out[1].retry
        assert all(o.run_s is not None and o.run_s >= 0 for o in out)
        assert out[0].run_s is not None and out[0].run_s >= 0.35
        assert core.info()["running"] == []
        assert not core.cancel("c")  # finished: nothing to cancel
    finally:
        core.close()


def test_batch_past_its_budget_hands_back_the_jobs_it_did_not_start(redis_url: str, prefix: str) -> None:
    core = make_core(redis_url, prefix)
    try:
        out = core.run_batch([job("slow", durationS=0.2), job("x"), job("y")], budget_s=0.05).outcomes
        assert [o.kind for o in out] == ["done", "skipped", "skipped"]
        out = core.run_batch([job("p"), job("q")], budget_s=0.05).outcomes
        assert [o.kind for o in out] == ["done", "done"]
    finally:
        core.close()


def test_errors_users_see_carry_no_paths_urls_or_passwords(redis_url: str, prefix: str) -> None:
    core = make_core(redis_url, prefix)
    try:
        message = "cannot open /srv/dash/data/models/tiny/unet.bin via redis://:hunter2@10.1.2.3:6379/0"
        [out] = core.run_batch([job("leaky", failAttempts=1, failMessage=message)]).outcomes
    finally:
        core.close()
    assert out.kind == "failed" and out.retry
    assert "/srv/dash" not in out.error and "hunter2" not in out.error and "10.1.2.3" not in out.error
    assert "unet.bin" in out.error and out.error.startswith("RuntimeError: cannot open")


def test_a_job_its_consumer_announced_gets_no_second_start_and_one_found_cancelled_never_runs(
        redis_url: str, prefix: str) -> None:
    import dataclasses

    from dash_ray.queues import Keys, connect_sync

    core = make_core(redis_url, prefix)
    redis, keys = connect_sync(redis_url), Keys(prefix)
    try:
        announced = dataclasses.replace(job("ann", durationS=0.05, steps=2), announced=True)
        stopped = dataclasses.replace(job("stop", durationS=5.0, steps=50), announced=True, stop=True)
        [a] = core.run_batch([announced]).outcomes
        t0 = time.monotonic()
        [s] = core.run_batch([stopped]).outcomes
        assert a.kind == "done" and s.kind == "cancelled" and time.monotonic() - t0 < 1.0
        def evs(job_id: str) -> list[dict[str, Any]]:
            return [json.loads(f.get("m") or f[b"m"]) for _, f in redis.xrange(keys.events(job_id))]

        ran = evs("ann")
        assert ran and all(e["status"] == "active" and e["progress"] > 0 for e in ran)  # no start of its own
        assert evs("stop") == []  # found cancelled as it was handed over: not a step ran
    finally:
        redis.close()
        core.close()
