"""The real workloads through Ray and Redis on tiny models: each queue end to end, warm models,
cancel, resume after a killed training worker, and bad inputs that fail cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.helpers import assert_well_formed, events, wait_for, wait_status
from tests.workers.conftest import giant_png, png_data_url

# The runners on Ray: their Redis side (events, checkpoints, fencing) runs on both servers in
# tests/redis and tests/ray/test_scheduler.py.
pytestmark = pytest.mark.once


def art(sched: Any, url: str) -> Path:
    return Path(sched.settings.artifacts_location) / url.removeprefix("/v1/artifacts/")


def steps_then_completed(evs: list[dict[str, Any]]) -> None:
    assert_well_formed(evs)
    progress = [e["progress"] for e in evs if e["type"] == "job:progress" and e["status"] == "active"]
    assert progress == sorted(progress) and progress[-1] == 100
    assert evs[-1]["type"] == "job:completed"


async def test_each_queue_end_to_end(make_real_scheduler: Any, make_store: Any) -> None:
    sched = make_real_scheduler(("generation", "upscaling", "training"))
    store = make_store()
    src = png_data_url(40, 32)
    gen = (await store.add("generation", {"userId": "u", "prompt": "a fox",
                                         "settings": {"steps": 3, "width": 64, "height": 96, "seed": 1}})).job.id
    lan = (await store.add("upscaling", {"userId": "u", "imageUrl": src, "scale": 4})).job.id
    dif = (await store.add("upscaling", {"userId": "u", "imageUrl": src, "scale": 2, "model": "tiny-upscaler"})).job.id
    trn = (await store.add("training", {"userId": "u", "loraId": "lora-e2e", "prompt": "sks", "imageUrls": [src] * 2,
                                        "settings": {"epochs": 2, "resolution": 64, "rank": 4}})).job.id
    views = {j: await wait_status(store, j, ("completed", "failed"), timeout_s=180) for j in (gen, lan, dif, trn)}
    assert all(v.status == "completed" for v in views.values()), {j: v.error for j, v in views.items()}
    with Image.open(art(sched, views[gen].result["images"][0])) as img:
        assert img.size == (64, 96)
    with Image.open(art(sched, views[lan].result["image"])) as img:
        assert img.size == (160, 128)
    with Image.open(art(sched, views[dif].result["image"])) as img:
        assert img.size == (80, 64)
    assert art(sched, views[trn].result["weights"]).stat().st_size > 1000
    gen_evs = await events(store, gen)
    steps_then_completed(gen_evs)
    assert [e["step"] for e in gen_evs if e["type"] == "job:progress" and e.get("step")] == [1, 2, 3]
    steps_then_completed(await events(store, dif))
    trn_evs = await events(store, trn)
    steps_then_completed(trn_evs)
    assert [e["epoch"] for e in trn_evs if e.get("loss") is not None] == [1, 2]
    # a second job for the same model on the warm worker does not load it again
    again = (await store.add("generation", {"userId": "u", "prompt": "again", "settings": {"steps": 2, "width": 64,
                                                                                           "height": 64}})).job.id
    view = await wait_status(store, again, ("completed",), timeout_s=60)
    assert view.result["modelLoads"] == views[gen].result["modelLoads"] == 1


async def test_cancel_mid_generation_and_mid_training(make_real_scheduler: Any, make_store: Any) -> None:
    make_real_scheduler(("generation", "training"))
    store = make_store()
    gen = (await store.add("generation", {"userId": "u", "prompt": "slow", "settings": {"steps": 150, "width": 64,
                                                                                         "height": 64}})).job.id
    trn = (await store.add("training", {"userId": "u", "prompt": "sks", "imageUrls": [png_data_url()] * 4,
                                        "settings": {"epochs": 200, "resolution": 64, "rank": 4}})).job.id
    for job_id in (gen, trn):
        async def stepping(job_id: str = job_id) -> bool:
            return sum(1 for e in await events(store, job_id) if e.get("step")) >= 3

        await wait_for(stepping, 120)
        t0 = time.time()
        await store.cancel(job_id)
        view = await wait_status(store, job_id, ("cancelled",), timeout_s=10)
        evs = await events(store, job_id)
        assert_well_formed(evs)
        assert evs[-1]["type"] == "job:failed" and evs[-1]["error"] == "cancelled"
        assert evs[-1]["ts"] - t0 < 1.5, evs[-1]["ts"] - t0
        assert view.status == "cancelled"
    # the workers keep serving
    ok = (await store.add("generation", {"userId": "u", "prompt": "after", "settings": {"steps": 2, "width": 64,
                                                                                         "height": 64}})).job.id
    assert (await wait_status(store, ok, ("completed", "failed"), timeout_s=60)).status == "completed"


async def test_killed_training_worker_resumes_from_the_last_epoch(make_real_scheduler: Any, make_store: Any) -> None:
    sched = make_real_scheduler(("training",))
    store = make_store()
    job_id = (await store.add("training", {"userId": "u", "loraId": "resume-me", "prompt": "sks",
                                           "imageUrls": [png_data_url(), png_data_url(color=(9, 9, 200))] * 8,
                                           "settings": {"epochs": 4, "resolution": 64, "rank": 4}},
                              {"attempts": 2, "backoff": {"type": "fixed", "delayS": 0}})).job.id

    async def epoch_two_done() -> bool:
        return any(e.get("epoch") == 2 and e.get("loss") is not None for e in await events(store, job_id))

    await wait_for(epoch_two_done, 180, interval_s=0.02)
    pid = (await asyncio.to_thread(sched.stats))["training"]["running_jobs"][job_id]
    os.kill(pid, signal.SIGKILL)
    view = await wait_status(store, job_id, ("completed", "failed"), timeout_s=180)
    assert view.status == "completed" and view.result["resumedFromEpoch"] == 2
    evs = await events(store, job_id)
    assert_well_formed(evs)
    second = evs[max(i for i, e in enumerate(evs) if e.get("message", "").startswith("started (attempt 2")):]
    resumed = [e["message"] for e in second if e.get("message", "").startswith("resuming")]
    assert resumed == ["resuming after epoch 2/4"]
    assert min(e["epoch"] for e in second if e.get("step")) == 3  # no epoch 1 or 2 trained again
    assert [e["epoch"] for e in second if e.get("loss") is not None][-2:] == [3, 4]


async def test_bad_inputs_fail_clearly_and_the_worker_keeps_serving(make_real_scheduler: Any, make_store: Any,
                                                                    tmp_path: Path) -> None:
    make_real_scheduler(("upscaling",), allowed_image_hosts=["images.example.com"])
    store = make_store()
    (tmp_path / "text.png").write_bytes(b"I am not a PNG")
    (tmp_path / "giant.png").write_bytes(giant_png())
    cases = {
        f"file://{tmp_path}/text.png": "not an image",
        f"file://{tmp_path}/giant.png": "too large",
        "https://not-allowed.example.org/a.png": "not allowed",
    }
    ids = {(await store.add("upscaling", {"userId": "u", "imageUrl": url, "scale": 2})).job.id: why
           for url, why in cases.items()}
    for job_id, why in ids.items():
        view = await wait_status(store, job_id, ("failed", "completed"), timeout_s=120)
        assert view.status == "failed" and why in view.error, view.error
        assert view.attempts_made == 1  # a bad input is not retried
    ok = (await store.add("upscaling", {"userId": "u", "imageUrl": png_data_url(), "scale": 2})).job.id
    assert (await wait_status(store, ok, ("completed", "failed"), timeout_s=60)).status == "completed"
