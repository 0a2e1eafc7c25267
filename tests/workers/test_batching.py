"""Generation batching and LoRA adapters on the tiny model (CPU, no Ray, no Redis): one pipeline
call per batch, each job's images as if alone, per-job events, files and cancel; LoRAs loaded once,
switched, disabled, reloaded when retrained."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dash_ray.errors import DeviceOutOfMemory, JobCancelled, WorkerError
from tests.workers.conftest import RecordingBus, artifact

SIZE = {"steps": 3, "width": 64, "height": 64}
# The batched UNet and VAE kernels round differently from single-row ones on the CPU (measured:
# up to ~2e-6 in the output floats), which moves a handful of pixels by one level of 255.
PIXEL_TOLERANCE = 1


def gen_job(prompt: str, seed: int, **settings: Any) -> dict[str, Any]:
    return {"userId": "u", "prompt": prompt, "settings": {**SIZE, "seed": seed, **settings}}


@pytest.fixture(scope="module")
def gen(worker_settings: Any) -> Any:
    from dash_ray.workers.generation import GenerationRunner

    return GenerationRunner(settings=worker_settings)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows of each call of the real StableDiffusionPipeline, in order."""
    from diffusers import StableDiffusionPipeline

    seen: list[int] = []
    real = StableDiffusionPipeline.__call__

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(len(kwargs["prompt"]))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", counting)
    return seen


@pytest.fixture
def run_batch() -> Callable[..., Any]:
    """Run jobs with `runner.run_batch`, each with its own reporter and bus (as `run_job`); returns
    (results, buses). `cancel_at`: job id -> the step after which its cancel is set."""
    from dash_ray.scheduler.runner import EventReporter, JobContext, Publisher

    class CancelAt(EventReporter):
        def __init__(self, *args: Any, at: int, cancel: threading.Event, **kwargs: Any) -> None:
            super().__init__(*args, cancelled=cancel, **kwargs)
            self.at, self.cancel_event = at, cancel

        def progress(self, progress: float, message: str = "", *, milestone: bool = False, **extra: Any) -> None:
            super().progress(progress, message, milestone=milestone, **extra)
            if extra.get("step") == self.at:
                self.cancel_event.set()

    def run(runner: Any, jobs: dict[str, dict[str, Any]],
            cancel_at: dict[str, int] | None = None) -> tuple[list[Any], dict[str, RecordingBus]]:
        buses = {job_id: RecordingBus() for job_id in jobs}
        pubs = {job_id: Publisher(bus) for job_id, bus in buses.items()}
        ctxs = [JobContext(id=job_id, queue="generation", data={**data, "jobId": job_id}, attempts=3,
                           user_id=data.get("userId")) for job_id, data in jobs.items()]
        reporters: list[Any] = []
        for ctx in ctxs:
            at = (cancel_at or {}).get(ctx.id)
            reporters.append(EventReporter(ctx, pubs[ctx.id], max_hz=1000) if at is None else
                             CancelAt(ctx, pubs[ctx.id], max_hz=1000, at=at, cancel=threading.Event()))
        results = runner.run_batch(ctxs, reporters)
        for rep, pub in zip(reporters, pubs.values(), strict=True):
            rep.flush()
            pub.close()
        return results, buses

    return run


def pixels(settings: Any, url: str) -> Any:
    with Image.open(artifact(settings, url)) as img:
        return np.asarray(img).astype(int)


def steps_of(bus: RecordingBus) -> list[int]:
    return [e.step for e in bus.progress if e.step]


def job_files(settings: Any, job_id: str) -> list[Path]:
    folder = Path(settings.artifacts_location) / "u" / job_id
    return sorted(folder.glob("*")) if folder.exists() else []


def test_eight_jobs_one_call_each_image_as_alone(gen: Any, run_batch: Any, run_job: Any, calls: list[int],
                                                worker_settings: Any) -> None:
    prompts = ["a red fox", "a blue bird", "a cat", "a dog", "a house", "a tree", "the sea", "the sun"]
    jobs = {f"b{i}": gen_job(p, 100 + 7 * i, **({"numImages": 2} if i == 3 else {}))
            for i, p in enumerate(prompts)}
    jobs["b5"]["settings"]["negativePrompt"] = "blurry"
    results, buses = run_batch(gen, jobs)
    assert calls == [9]  # one pipeline call, 8 jobs, 9 rows
    for (job_id, data), result in zip(jobs.items(), results, strict=True):
        assert not isinstance(result, Exception), result
        n = data["settings"].get("numImages", 1)
        assert result["batch"] == 8 and result["seed"] == data["settings"]["seed"] and len(result["images"]) == n
        assert result["images"] == [f"/v1/artifacts/u/{job_id}/image-{k}.png" for k in range(n)]
        assert steps_of(buses[job_id]) == [1, 2, 3]  # its own events, one per step
        assert buses[job_id].progress[-1].progress == 100
        logs = [e.message for e in buses[job_id].extra if e.type == "job:log"]
        assert f"64x64, 3 steps, {n} image(s), seed {data['settings']['seed']}" in logs
        assert "batched: 8 jobs, 9 images in one pass" in logs
        assert all(e.job_id == job_id for e in buses[job_id].extra + buses[job_id].progress)
    previews = [e for e in buses["b3"].extra if e.type == "job:preview"]
    assert previews and previews[0].step == 1
    # each image is its solo image for the same seed (row k of a job: seed + k)
    for job_id, result in zip(jobs, results, strict=True):
        alone, _ = run_job(gen, "generation", {**jobs[job_id], "jobId": f"{job_id}-alone"}, job_id=f"{job_id}-alone")
        assert alone["batch"] == 1 and len(alone["images"]) == len(result["images"])
        for url, solo_url in zip(result["images"], alone["images"], strict=True):
            diff = np.abs(pixels(worker_settings, url) - pixels(worker_settings, solo_url))
            assert diff.max() <= PIXEL_TOLERANCE and (diff > 0).mean() < 0.01, (job_id, diff.max())
    a, b = (pixels(worker_settings, u) for u in results[3]["images"])
    assert np.abs(a - b).mean() > 1  # seed + 1: another image
    assert calls == [9, 1, 1, 1, 2, 1, 1, 1, 1]


def test_cancel_of_one_member_ends_only_its_rows(gen: Any, run_batch: Any, calls: list[int],
                                                 worker_settings: Any) -> None:
    jobs = {f"c{i}": gen_job(f"prompt {i}", i, steps=6) for i in range(3)}
    results, buses = run_batch(gen, jobs, cancel_at={"c1": 2})
    assert calls == [3]
    assert isinstance(results[1], JobCancelled)
    assert steps_of(buses["c1"]) == [1, 2]  # no events after its cancel
    assert job_files(worker_settings, "c1") == []
    for i in (0, 2):
        assert results[i]["batch"] == 3 and steps_of(buses[f"c{i}"]) == list(range(1, 7))
        assert [p.name for p in job_files(worker_settings, f"c{i}")] == ["image-0.png"]


def test_all_members_cancelled_stop_the_pass(gen: Any, run_batch: Any, calls: list[int], worker_settings: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import AutoPipelineForText2Image

    _, pipe = gen.pipeline(None, AutoPipelineForText2Image)
    forwards = 0
    real = pipe.unet.forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal forwards
        forwards += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(pipe.unet, "forward", counting)
    jobs = {f"x{i}": gen_job(f"prompt {i}", i, steps=40) for i in range(2)}
    results, buses = run_batch(gen, jobs, cancel_at={"x0": 2, "x1": 3})
    assert calls == [2] and all(isinstance(r, JobCancelled) for r in results)
    assert steps_of(buses["x0"]) == [1, 2] and steps_of(buses["x1"]) == [1, 2, 3]
    assert forwards == 4  # stopped after the step whose callback found every job cancelled, of 40
    assert job_files(worker_settings, "x0") == job_files(worker_settings, "x1") == []


def test_rows_split_to_what_fits_and_a_batch_out_of_memory_runs_alone(
        worker_settings: Any, run_batch: Any, calls: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from dash_ray.workers.generation import GenerationRunner

    gen = GenerationRunner(settings=worker_settings)
    monkeypatch.setattr(gen.memory, "max_rows", lambda shape, limit: 2)
    jobs = {"s0": gen_job("a", 1), "s1": gen_job("b", 2), "s2": gen_job("c", 3, numImages=2), "s3": gen_job("d", 4)}
    results, _ = run_batch(gen, jobs)
    assert calls == [2, 2, 1] and [r["batch"] for r in results] == [2, 2, 1, 1]

    calls.clear()
    loads = gen.cache.loads
    tripped: list[str] = []

    def check(where: str = "") -> None:
        if not tripped:
            tripped.append(where)
            raise torch.OutOfMemoryError("simulated")

    monkeypatch.setattr(gen.memory, "check", check)
    monkeypatch.setattr(gen.memory, "max_rows", lambda shape, limit: limit)
    results, buses = run_batch(gen, {"o0": gen_job("a", 1), "o1": gen_job("b", 2)})
    assert tripped == ["step 1"] and calls == [2, 1, 1]  # the batch, then each job alone
    assert [r["batch"] for r in results] == [1, 1] and gen.cache.loads == loads  # the model stayed
    assert any("out of memory in a batch of 2 jobs" in e.message for e in buses["o0"].extra if e.type == "job:log")
    calls.clear()
    results, _ = run_batch(gen, {"o2": gen_job("a", 1), "o3": gen_job("b", 2)})
    assert calls == [1, 1]  # that shape now runs in fewer rows than ran out

    def always(where: str = "") -> None:
        raise torch.OutOfMemoryError("simulated")

    monkeypatch.setattr(gen.memory, "check", always)
    results, _ = run_batch(gen, {"m0": gen_job("a", 1, numImages=2)})  # one job: `run`
    assert isinstance(results[0], DeviceOutOfMemory)
    assert str(results[0]).startswith("out of GPU memory at 64x64, batch 2: simulated")


def test_preload_and_loaded_models(worker_settings: Any) -> None:
    from dash_ray.workers.generation import GenerationRunner

    runner = GenerationRunner(settings=worker_settings)
    runner.preload(["tiny", "no-such-model"])  # the unknown one is logged, not raised
    assert runner.loaded_models() == ["tiny"] and runner.cache.loads == 1


# --- LoRA adapters ---

def make_lora(settings: Any, user: str, lora_id: str, seed: int) -> None:
    """A random rank-4 LoRA of the tiny UNet, saved as training saves one."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from dash_ray.services.artifacts import ArtifactStore
    from dash_ray.services.registry import lora_path
    from dash_ray.workers.training import TARGET_MODULES

    unet = UNet2DConditionModel.from_pretrained(str(settings.models_dir / "tiny"), subfolder="unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=TARGET_MODULES))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.3)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    with tempfile.TemporaryDirectory() as tmp:
        StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=layers, safe_serialization=True)
        data = (Path(tmp) / "pytorch_lora_weights.safetensors").read_bytes()
    ArtifactStore(settings.artifacts_location).put(lora_path(user, lora_id), data)


@pytest.fixture(scope="module")
def loras(worker_settings: Any) -> list[str]:
    for i, lora_id in enumerate(("la", "lb")):
        make_lora(worker_settings, "u", lora_id, seed=i)
    return ["la", "lb"]


def lora_job(lora_id: str | None, seed: int = 5) -> dict[str, Any]:
    return gen_job("a red fox", seed, **({"loraId": lora_id} if lora_id else {}))


def test_a_lora_stays_loaded_and_no_lora_is_the_plain_image(gen: Any, loras: list[str], run_job: Any,
                                                           run_batch: Any, worker_settings: Any) -> None:
    from dash_ray.workers.generation import GenerationRunner

    fresh = GenerationRunner(settings=worker_settings)
    plain, _ = run_job(fresh, "generation", {**lora_job(None), "jobId": "p0"}, job_id="p0")
    assert plain["loraLoads"] == 0

    loads = gen.adapters.loads
    first, _ = run_job(gen, "generation", {**lora_job("la"), "jobId": "l1"}, job_id="l1")
    logs = [e.message for e in run_job.bus.extra if e.type == "job:log"]
    second, _ = run_job(gen, "generation", {**lora_job("la"), "jobId": "l2"}, job_id="l2")
    assert first["loraLoads"] == second["loraLoads"] == loads + 1  # loaded once
    assert "LoRA la loaded, applied (weight 1)" in logs
    assert "LoRA la warm, applied (weight 1)" in [e.message for e in run_job.bus.extra if e.type == "job:log"]
    assert np.array_equal(pixels(worker_settings, first["images"][0]), pixels(worker_settings, second["images"][0]))
    assert "lora:u/la" in gen.loaded_models()

    after, _ = run_job(gen, "generation", {**lora_job(None), "jobId": "p1"}, job_id="p1")
    with_lora = pixels(worker_settings, first["images"][0])
    assert np.abs(with_lora - pixels(worker_settings, plain["images"][0])).mean() > 1  # the LoRA shows
    assert np.array_equal(pixels(worker_settings, after["images"][0]), pixels(worker_settings, plain["images"][0]))
    again, _ = run_job(gen, "generation", {**lora_job("la"), "jobId": "l3"}, job_id="l3")  # re-enabled after off
    assert again["loraLoads"] == loads + 1
    assert np.array_equal(pixels(worker_settings, again["images"][0]), with_lora)

    # a batch with the LoRA: as alone
    results, _ = run_batch(gen, {"lb0": lora_job("la", seed=5), "lb1": lora_job("la", seed=9)})
    assert results[0]["batch"] == 2 and results[0]["loraLoads"] == loads + 1
    assert np.abs(pixels(worker_settings, results[0]["images"][0]) - with_lora).max() <= PIXEL_TOLERANCE

    missing, _ = run_job(gen, "generation", {**lora_job("nope"), "jobId": "l4"}, job_id="l4")
    assert isinstance(missing, WorkerError) and "no trained LoRA 'nope'" in str(missing)


def test_lora_switching_eviction_retraining_and_model_drop(worker_settings: Any, loras: list[str],
                                                           run_job: Any) -> None:
    from dash_ray.workers.generation import GenerationRunner

    one = GenerationRunner(settings=worker_settings.model_copy(update={"lora_cache_count": 1}))
    two = GenerationRunner(settings=worker_settings)

    def switch(runner: Any, order: list[str]) -> list[int]:
        return [run_job(runner, "generation", {**lora_job(lora_id), "jobId": "sw"}, job_id="sw")[0]["loraLoads"]
                for lora_id in order]

    assert switch(one, ["la", "lb", "la"]) == [1, 2, 3]  # room for one: B evicts A
    assert one.loaded_models() == ["tiny", "lora:u/la"] and len(one.adapters.entries) == 1
    assert switch(two, ["la", "lb", "la"]) == [1, 2, 2]
    assert two.loaded_models() == ["tiny", "lora:u/lb", "lora:u/la"]  # least recently used first

    before, _ = run_job(two, "generation", {**lora_job("la"), "jobId": "rt0"}, job_id="rt0")
    time.sleep(0.05)  # the file's modification time moves on
    make_lora(worker_settings, "u", "la", seed=7)  # retrained
    after, _ = run_job(two, "generation", {**lora_job("la"), "jobId": "rt1"}, job_id="rt1")
    assert after["loraLoads"] == before["loraLoads"] + 1
    assert np.abs(pixels(worker_settings, after["images"][0]) - pixels(worker_settings, before["images"][0])).mean() > 1
    assert [k.lora_id for k in two.adapters.entries] == ["lb", "la"]  # the old version was deleted

    two.cache.clear()  # the model went (out of memory, eviction): its adapters with it
    assert two.loaded_models() == []
    again, _ = run_job(two, "generation", {**lora_job("la"), "jobId": "rt2"}, job_id="rt2")
    assert again["loraLoads"] == after["loraLoads"] + 1
    assert np.array_equal(pixels(worker_settings, again["images"][0]), pixels(worker_settings, after["images"][0]))
