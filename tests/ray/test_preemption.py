"""GPU arbitration on the real stack (a local Ray, tiny models): a training job that holds the
only free GPU yields it at an epoch boundary to a burst of generation jobs, then resumes from
its checkpoint, having trained each epoch once and used no attempt."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import ray
from ray.util.placement_group import placement_group, remove_placement_group

from tests.helpers import all_done, assert_well_formed, events, intervals, wait_for
from tests.workers.conftest import png_data_url

pytestmark = pytest.mark.once  # scheduling on Ray: the same on any Redis server


async def test_training_yields_to_a_generation_burst_and_resumes(make_real_scheduler: Any, make_store: Any) -> None:
    # This node keeps one GPU free (the rest held by a placement group): the training worker
    # (a whole GPU) and generation workers (a fifth each) cannot run together.
    spare = ray.cluster_resources()["GPU"] - 1
    held = placement_group([{"GPU": spare}]) if spare > 0 else None
    if held is not None:
        await asyncio.wait_for(asyncio.wrap_future(held.ready().future()), 60)
    try:
        sched = make_real_scheduler(("training", "generation"), preempt_after_s=1.0, training_gpu_fraction=1.0,
                                    generation_gpu_fraction=0.2, worker_idle_s=600)
        store = make_store()
        train = (await store.add("training", {"userId": "u", "loraId": "yielder", "prompt": "sks",
                                              "imageUrls": [png_data_url(), png_data_url(color=(9, 9, 200))] * 8,
                                              "settings": {"epochs": 20, "resolution": 64, "rank": 4}})).job.id

        async def epoch_two_done() -> bool:
            return any(e.get("epoch") == 2 and e.get("loss") is not None for e in await events(store, train))

        await wait_for(epoch_two_done, 180, interval_s=0.05)
        gens = [(await store.add("generation", {"userId": "g", "prompt": f"a fox {i}",
                                                "settings": {"steps": 4, "width": 64, "height": 64}})).job.id
                for i in range(10)]
        views = await all_done(store, [*gens, train], 300)
        assert {v.status for v in views} == {"completed"}, [(v.id, v.status, v.error) for v in views]
        tv = views[-1]
        evs = await events(store, train)
        assert_well_formed(evs)
        yielded = [e for e in evs if e.get("message", "").startswith("preempted after epoch")]
        assert len(yielded) == 1 and yielded[0]["status"] == "waiting", [e.get("message") for e in evs]
        k = int(yielded[0]["message"].split("epoch ")[1].split("/")[0])
        assert 2 <= k < 20 and tv.result["resumedFromEpoch"] == k
        starts = [e["message"] for e in evs if e.get("message", "").startswith("started")]
        assert len(starts) == 2 and all("attempt 1 of" in m for m in starts), starts  # no attempt used
        # every epoch trained once: each ended once, in order, and no step came twice (steps are
        # throttled, so an epoch's first may be folded into its second; epoch ends never are)
        ended = [e["epoch"] for e in evs if e.get("message", "").startswith("epoch ") and "loss" in e]
        assert ended == list(range(1, 21)), ended
        stepped = [(e["epoch"], e["step"]) for e in evs if e.get("step")]
        assert stepped == sorted(set(stepped)), stepped
        resumed_at = intervals(evs)[-1][0]
        gen_starts = [intervals(await events(store, g))[0][0] for g in gens]
        assert max(gen_starts) < resumed_at  # the burst ran while training waited
        stats = await asyncio.to_thread(sched.stats)
        assert stats["training"]["preempted"] == 1

        async def measured() -> Any:  # each queue's peaks, per model and size (on the CPU: the RSS)
            return (await store.control.sizing("generation"))[1] and (await store.control.sizing("training"))[1]

        await wait_for(measured, 10, interval_s=0.2)
        fraction, peaks = await store.control.sizing("generation")
        assert fraction == 0.2  # nothing measured on a GPU: the configured share
        assert list(peaks) == ["-:64x64"]  # the default model at 64 x 64
        # on the CPU a run's peak is what it added to the worker's resident memory (its first run loads the model)
        assert peaks["-:64x64"][0] == "rss" and peaks["-:64x64"][1] > 1024**2
        assert {kind for kind, _ in (await store.control.sizing("training"))[1].values()} == {"rss"}
    finally:
        if held is not None:
            remove_placement_group(held)
