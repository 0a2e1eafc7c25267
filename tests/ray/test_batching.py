"""Batched generation through Ray and Redis on the tiny model: compatible jobs share one pass
and each keeps what it has alone (its image for its seed, its events, its cancel, its retries);
a worker over its memory share fails its own job, and a neighbour on the same device runs on."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.helpers import assert_well_formed, events, wait_for, wait_status

# The most a pixel of a batched image may differ from the same job's image alone (0-255): a
# batch of 8 goes through other CPU kernels than a batch of 1, which round differently.
TOLERANCE = 2

pytestmark = pytest.mark.once  # batching and cold starts on Ray: the same on any Redis server (the take's
# Redis side runs on both in tests/redis/test_batch_take.py)


def pixels(sched: Any, url: str) -> np.ndarray:
    path = Path(sched.settings.artifacts_location) / url.removeprefix("/v1/artifacts/")
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)


def gen(prompt: str, seed: int, steps: int = 3, user: str = "u", **settings: Any) -> dict[str, Any]:
    return {"userId": user, "prompt": prompt, "settings": {"steps": steps, "width": 64, "height": 64, "seed": seed,
                                                          **settings}}


async def stepping(store: Any, job_id: str, steps: int = 2) -> bool:
    return sum(1 for e in await events(store, job_id) if e.get("step")) >= steps


async def test_eight_compatible_jobs_share_one_pass_and_each_image_is_its_solo_image(
        make_real_scheduler: Any, make_store: Any) -> None:
    store = make_store()
    # Waiting before any worker exists: the first worker's first take finds all eight.
    # two tenants' jobs in one pass: each keeps its own files
    jobs = [gen(f"a fox, take {i}", 100 + i, user="alice" if i % 2 else "bob", **({"numImages": 2} if i == 0 else {}))
            for i in range(8)]
    ids = [(await store.add("generation", data)).job.id for data in jobs]
    sched = make_real_scheduler(("generation",), generation_concurrency=1, generation_max_batch=9)
    views = [await wait_status(store, j, ("completed", "failed"), timeout_s=240) for j in ids]
    assert all(v.status == "completed" for v in views), [v.error for v in views]
    assert [v.result["batch"] for v in views] == [8] * 8
    for data, j, view in zip(jobs, ids, views, strict=True):
        assert all(f"/{data['userId']}/{j}/image-" in url for url in view.result["images"])
    assert len(views[0].result["images"]) == 2 and [v.result["seed"] for v in views] == [100 + i for i in range(8)]
    stats = (await asyncio.to_thread(sched.stats))["generation"]
    assert stats["batched_passes"] == 1 and stats["batched_jobs"] == 8
    for j in ids:  # each its own events: its steps 1..3, one final event
        evs = await events(store, j)
        assert_well_formed(evs)
        assert [e["step"] for e in evs if e["type"] == "job:progress" and e.get("step")] == [1, 2, 3]
    # Alone now (each waits for the last): the same seed gives the same image.
    for data, view in zip(jobs, views, strict=True):
        solo_id = (await store.add("generation", data)).job.id
        solo = await wait_status(store, solo_id, ("completed", "failed"), timeout_s=60)
        assert solo.status == "completed" and solo.result["batch"] == 1
        for batched_url, solo_url in zip(view.result["images"], solo.result["images"], strict=True):
            diff = np.abs(pixels(sched, batched_url) - pixels(sched, solo_url))
            assert diff.max() <= TOLERANCE, (data["prompt"], int(diff.max()))
    timings = views[0].result["timings"]
    assert timings["queuedS"] > 0 and timings["coldStartS"] > 0 and timings["firstStepS"] > 0


async def test_a_cancel_inside_a_batch_ends_only_that_job_at_once(make_real_scheduler: Any, make_store: Any) -> None:
    store = make_store()
    ids = [(await store.add("generation", gen(f"slow {i}", i, steps=150))).job.id for i in range(4)]
    make_real_scheduler(("generation",), generation_concurrency=1)
    for j in ids:
        await wait_for(lambda j=j: stepping(store, j, 3), 180)
    await store.cancel(ids[1])
    view = await wait_status(store, ids[1], ("cancelled",), timeout_s=10)
    others = [await store.get(j) for j in (ids[0], ids[2], ids[3])]
    assert [v.status for v in others] == ["active"] * 3  # the pass runs on without it
    done = [await wait_status(store, j, ("completed", "failed"), timeout_s=240) for j in (ids[0], ids[2], ids[3])]
    assert [v.status for v in done] == ["completed"] * 3 and [v.result["batch"] for v in done] == [4] * 3
    evs = await events(store, ids[1])
    assert_well_formed(evs)
    assert evs[-1]["type"] == "job:failed" and view.status == "cancelled"
    assert not view.result


async def test_a_worker_killed_mid_batch_retries_each_member_once(make_real_scheduler: Any,
                                                                  make_store: Any) -> None:
    store = make_store()
    retry = {"attempts": 2, "backoff": {"type": "fixed", "delayS": 0}}
    ids = [(await store.add("generation", gen(f"doomed {i}", i, steps=100), retry)).job.id for i in range(3)]
    sched = make_real_scheduler(("generation",), generation_concurrency=1)
    for j in ids:
        await wait_for(lambda j=j: stepping(store, j, 2), 180)
    pid = (await asyncio.to_thread(sched.stats))["generation"]["running_jobs"][ids[0]]
    os.kill(pid, signal.SIGKILL)
    views = [await wait_status(store, j, ("completed", "failed"), timeout_s=240) for j in ids]
    assert [v.status for v in views] == ["completed"] * 3, [v.error for v in views]
    for j in ids:
        evs = await events(store, j)
        assert_well_formed(evs)
        assert sum(1 for e in evs if e.get("status") == "retrying") == 1  # each member once
        started = [e["attempt"] for e in evs if str(e.get("message", "")).startswith("started (attempt")]
        assert started == [1, 2]


async def test_a_worker_over_its_memory_share_fails_its_own_job_and_its_neighbour_runs_on(
        make_real_scheduler: Any, make_store: Any) -> None:
    """Two workers share one (simulated, 300 MiB) GPU at half each. On the CPU the cap is checked
    between steps against what the run added to the worker's memory (workers/memory.py); on a GPU
    the CUDA allocator enforces it on every allocation: the same error path from there on."""
    store = make_store()
    make_real_scheduler(("generation",), generation_concurrency=2, generation_gpu_fraction=0.5,
                        simulated_gpu_bytes=300 * 2**20, generation_max_batch=1)
    small = (await store.add("generation", gen("a small slow one", 1, steps=120))).job.id
    await wait_for(lambda: stepping(store, small, 2), 180)
    big = (await store.add("generation", gen("a big one", 2, steps=4, width=512, height=512))).job.id
    failed = await wait_status(store, big, ("completed", "failed"), timeout_s=180)
    assert failed.status == "failed" and failed.error.startswith("out of GPU memory at 512x512, batch 1: "), \
        failed.error
    assert (await store.get(small)).status in ("active", "completed")  # its neighbour: untouched
    done = await wait_status(store, small, ("completed", "failed"), timeout_s=180)
    assert done.status == "completed"
    evs = await events(store, small)
    assert not [e for e in evs if e.get("status") == "retrying"]
