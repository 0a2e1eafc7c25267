"""Cold starts through Ray and Redis on the tiny model: measured by phase, cut by warm workers
(`DASH_<QUEUE>_MIN_WORKERS`) and by loading the waiting jobs' model before the first job."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.helpers import wait_for, wait_status

pytestmark = pytest.mark.once  # batching and cold starts on Ray: the same on any Redis server (the take's
# Redis side runs on both in tests/redis/test_batch_take.py)


def gen(prompt: str) -> dict[str, Any]:
    return {"userId": "u", "prompt": prompt, "settings": {"steps": 2, "width": 64, "height": 64, "seed": 1}}


async def test_a_new_worker_loads_the_waiting_jobs_model_before_its_first_job(make_real_scheduler: Any,
                                                                             make_store: Any) -> None:
    store = make_store()
    job_id = (await store.add("generation", gen("first of a cold queue"))).job.id
    make_real_scheduler(("generation",), generation_concurrency=1)
    view = await wait_status(store, job_id, ("completed", "failed"), timeout_s=180)
    assert view.status == "completed", view.error
    t = view.result["timings"]
    assert t["coldStartS"] > 0 and t["queuedS"] >= t["coldStartS"] * 0.5  # it waited for the worker to start
    assert t["loadS"] == 0 and view.result["modelLoads"] == 1  # loaded before the job, not by it
    assert t["firstStepS"] > 0


async def test_min_workers_stay_warm_and_their_first_job_waits_for_no_start(make_real_scheduler: Any,
                                                                           make_store: Any) -> None:
    store = make_store()
    sched = make_real_scheduler(("generation",), generation_concurrency=1, generation_min_workers=1)

    async def warm() -> Any:
        stats = (await asyncio.to_thread(sched.stats))["generation"]
        detail = stats["worker_detail"]
        # ready (its cold start reported), before any job: kept warm; "busy" while the dispatcher waits with it
        return detail[0]["cold"] if len(detail) == 1 and detail[0].get("cold") else None

    cold = await wait_for(warm, 120)
    assert cold["readyS"] >= cold["importS"] > 0 and cold["processS"] >= 0
    pid = (await asyncio.to_thread(sched.stats))["generation"]["worker_detail"][0]["pid"]
    job_id = (await store.add("generation", gen("on a warm worker"))).job.id
    view = await wait_status(store, job_id, ("completed", "failed"), timeout_s=120)
    assert view.status == "completed", view.error
    assert view.result["timings"]["coldStartS"] == 0
    stats = (await asyncio.to_thread(sched.stats))["generation"]
    assert [w["pid"] for w in stats["worker_detail"]] == [pid]
