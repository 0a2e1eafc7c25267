"""Generation on the GPU: images/s of diffusers called directly against dash-ray (batching off and
on, through a real local Ray + Redis + Scheduler with one generation worker), enqueue-to-first-step
latency (cold and warm), the cost of switching LoRAs, and peak memory at batch 1 and batch 8.

    bench/gpu_bench.sh [--quick] [--models tiny,sd15,sdxl] [--sizes 512,1024] [--steps 20] [--jobs 8]

Models are built from configs with random weights (timing does not depend on weights; nothing is
downloaded) and served through dash-ray's model registry (DASH_MODELS: name -> local folder):

- `sd15`: an SD 1.5-shaped StableDiffusionPipeline (UNet ~860M parameters, CLIP text encoder of
  12 layers / 768, the SD VAE), fp16, on CUDA only;
- `sdxl`: an SDXL-shaped StableDiffusionXLPipeline (UNet ~2.6B parameters with SDXL's config, two
  text encoders of 768 and 1280, the SD VAE), fp16, on CUDA only;
- `tiny`: dash-ray's built-in 64 px model (random weights, ~1M-parameter UNet).

On CUDA the default is sd15 and sdxl at 512 and 1024 px; without a GPU, `tiny` at 64 px on the CPU,
and the output says so. Every table is printed in Markdown (docs/benchmarks.md). The bench starts
its own embedded Redis and local Ray (127.0.0.1) and stops both, whatever happens.

For each model and size, with `--jobs` compatible jobs (same model, size, steps and guidance;
different prompts and seeds):

a. images/s: diffusers directly at batch 1 (one call per job) and at batch N (one call with the
   N prompts); dash-ray's runner in this process (jobs one by one, and `run_batch`); dash-ray
   through Ray with DASH_GENERATION_MAX_BATCH=1 (batching off) and =N (on), one generation worker
   (DASH_GENERATION_CONCURRENCY=1, so it compares with one process), warm, from the first submit
   to the last completion. "submitted at once" sends the N jobs as fast as the client can;
   "N waiting" adds them to the paused queue and times from the resume.
b. enqueue-to-first-step latency: cold (a fresh scheduler's first job: the worker process starts,
   imports, loads the model) with the worker's start phases, and warm (a lone job on the warm
   worker, median).
c. LoRA switch cost in the runner (no Ray): two LoRAs alternating job after job, kept loaded as
   adapters (the default cache) against loaded and deleted on every switch (an adapter cache of
   0, as DASH_LORA_CACHE_COUNT=0), and no LoRA.
d. peak memory of a run at batch 1 and batch N (the runner's `peak_memory()`: the allocator's peak
   on CUDA, the growth of the resident memory on the CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = [
    "a photo of a red fox in the snow", "a lighthouse on a cliff at dusk, oil painting",
    "a bowl of ramen, studio lighting", "an astronaut riding a horse on the moon",
    "a watercolor of a city street in the rain", "a macro photo of a dragonfly on a leaf",
    "a cozy cabin in a pine forest, winter morning", "a robot reading a book in a library",
]
USER = "bench"
GPU_MODELS = ("sd15", "sdxl")


# --------------------------------------------------------------------------- models from configs
def _sd_vae(scaling_factor: float) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                         block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512, scaling_factor=scaling_factor)


def _clip(hidden: int, layers: int, heads: int, intermediate: int, projection: int | None = None,
          act: str = "quick_gelu") -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    # The byte-level tokenizer of the tiny model (every character a token): ids 0-513, bos 512, eos 513.
    config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=intermediate,
                            num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                            bos_token_id=512, eos_token_id=513, pad_token_id=513, hidden_act=act,
                            projection_dim=projection or 512)
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _scheduler() -> Any:
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  num_train_timesteps=1000, steps_offset=1)


def sd15_unet() -> Any:
    """SD 1.5's UNet config (~860M parameters)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8,
    )


def sdxl_unet() -> Any:
    """SDXL's UNet config (~2.6B parameters)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
        use_linear_projection=True,
    )


def build_model(name: str, path: Path, device: str) -> int:
    """Build `name` (sd15 or sdxl) with random weights on `device` in fp16 and save it to `path`
    (safetensors, as a diffusers folder); returns the UNet's parameter count."""
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from dash_ray.workers.tiny import tiny_tokenizer

    torch.manual_seed(0)
    with torch.device(device):  # parameters made where they run: no minutes of CPU init for 2.6B of them
        if name == "sd15":
            unet = sd15_unet()
            pipe: Any = StableDiffusionPipeline(
                unet=unet, vae=_sd_vae(0.18215), text_encoder=_clip(768, 12, 12, 3072),
                tokenizer=tiny_tokenizer(path / "_tok"), scheduler=_scheduler(),
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        elif name == "sdxl":
            unet = sdxl_unet()
            pipe = StableDiffusionXLPipeline(
                unet=unet, vae=_sd_vae(0.13025), text_encoder=_clip(768, 12, 12, 3072),
                text_encoder_2=_clip(1280, 32, 20, 5120, projection=1280, act="gelu"),
                tokenizer=tiny_tokenizer(path / "_tok"), tokenizer_2=tiny_tokenizer(path / "_tok2"),
                scheduler=_scheduler())
        else:
            raise ValueError(name)
    params = sum(p.numel() for p in unet.parameters())
    pipe.to(torch.float16)
    pipe.save_pretrained(str(path), safe_serialization=True)
    del pipe, unet
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return params


def make_lora(settings: Any, model_dir: Path, lora_id: str, seed: int, device: str) -> None:
    """A random rank-8 LoRA of the model's UNet, saved as `workers/training.py` saves a trained one."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from dash_ray.services.artifacts import ArtifactStore
    from dash_ray.services.registry import lora_path
    from dash_ray.workers.training import TARGET_MODULES

    dtype = torch.float16 if device == "cuda" else torch.float32
    unet = UNet2DConditionModel.from_pretrained(str(model_dir), subfolder="unet", torch_dtype=dtype).to(device)
    unet.add_adapter(LoraConfig(r=8, lora_alpha=8, target_modules=TARGET_MODULES))
    torch.manual_seed(seed)
    with torch.no_grad():
        for pname, param in unet.named_parameters():
            if "lora_" in pname:
                param.normal_(0, 0.3 if device == "cpu" else 0.01)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    with tempfile.TemporaryDirectory() as tmp:
        StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=layers, safe_serialization=True)
        data = (Path(tmp) / "pytorch_lora_weights.safetensors").read_bytes()
    ArtifactStore(settings.artifacts_location).put(lora_path(USER, lora_id), data)
    del unet
    gc.collect()


# --------------------------------------------------------------------------- helpers
def md(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def job_data(model: str, size: int, steps: int, i: int, previews: bool, lora: str | None = None) -> dict[str, Any]:
    s: dict[str, Any] = {"model": model, "steps": steps, "width": size, "height": size, "seed": 1000 + i}
    if not previews:
        s["previewEvery"] = 0
    if lora:
        s["loraId"] = lora
    return {"userId": USER, "prompt": PROMPTS[i % len(PROMPTS)], "settings": s}


def passes_of(results: list[dict[str, Any]]) -> str:
    """The passes a round ran in, from each result's `batch` (jobs in its pass): e.g. `1+7`."""
    sizes = Counter(int(r.get("batch", 1)) for r in results if isinstance(r, dict))
    parts: list[int] = []
    for size, jobs in sorted(sizes.items()):
        parts += [size] * max(1, round(jobs / size))
    return "+".join(str(p) for p in sorted(parts)) or "?"


class Sync:
    """Waits for the device (CUDA work is asynchronous)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def __call__(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()


# --------------------------------------------------------------------------- in this process
class InProcess:
    """The runner in this process (no Ray, no Redis: events go to an in-memory sink), and the
    pipeline it loaded, called directly."""

    def __init__(self, settings: Any, model: str, size: int, args: argparse.Namespace, cuda: bool) -> None:
        from diffusers import AutoPipelineForText2Image

        from dash_ray.workers.generation import GenerationRunner

        self.settings, self.model, self.size, self.args = settings, model, size, args
        self.sync = Sync(cuda)
        self.runner = GenerationRunner(settings=settings)
        _, self.pipe = self.runner.pipeline(model, AutoPipelineForText2Image)
        self.n = args.jobs

    # --- diffusers directly ---
    def direct(self, prompts: list[str], seeds: list[int]) -> list[Any]:
        import torch

        gens = [self.runner.generator(s) for s in seeds]
        with torch.inference_mode():
            return list(self.pipe(prompt=prompts, negative_prompt=[""] * len(prompts),
                                  num_inference_steps=self.args.steps, guidance_scale=7.5, width=self.size,
                                  height=self.size, generator=gens).images)

    def direct_n_s(self) -> float:
        """Seconds of one diffusers call with N prompts."""
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(self.n)]
        self.sync()
        t0 = time.perf_counter()
        self.direct(prompts, [1000 + i for i in range(self.n)])
        self.sync()
        return time.perf_counter() - t0

    def direct_rates(self) -> dict[str, Any]:
        """Images/s of diffusers directly: batch 1 (N calls) and batch N (one call), alternating."""
        n = self.n
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
        seeds = [1000 + i for i in range(n)]
        self.direct(prompts[:1], seeds[:1])  # warm-up of both shapes
        self.direct(prompts, seeds)
        one, many = [], []
        images: list[Any] = []
        for _ in range(self.args.rounds):
            self.sync()
            t0 = time.perf_counter()
            for i in range(n):
                self.direct(prompts[i:i + 1], seeds[i:i + 1])
            self.sync()
            one.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            images = self.direct(prompts, seeds)
            self.sync()
            many.append(time.perf_counter() - t0)
        from dash_ray.workers.images import png_bytes

        t0 = time.perf_counter()
        sizes = [len(png_bytes(img)) for img in images]
        png_s = time.perf_counter() - t0
        return {"batch1_s": med(one), "batchN_s": med(many), "png_s": png_s, "png_bytes": sum(sizes)}

    # --- dash-ray's runner ---
    def _reporters(self, ids: list[str], datas: list[dict[str, Any]]) -> tuple[list[Any], list[Any], list[Any]]:
        from dash_ray.scheduler.runner import EventReporter, JobContext, Publisher
        from dash_ray.testing import RecordingSink

        ctxs, reps, pubs = [], [], []
        for job_id, data in zip(ids, datas, strict=True):
            pub = Publisher(RecordingSink())
            ctx = JobContext(id=job_id, queue="generation", data=data, user_id=USER)
            ctxs.append(ctx)
            reps.append(EventReporter(ctx, pub, max_hz=self.settings.progress_max_hz))
            pubs.append(pub)
        return ctxs, reps, pubs

    def run_jobs(self, datas: list[dict[str, Any]], together: bool) -> tuple[float, list[Any]]:
        """Run jobs through the runner (one by one, or `run_batch`); wall seconds and results."""
        ids = [f"ip-{uuid.uuid4().hex[:10]}" for _ in datas]
        ctxs, reps, pubs = self._reporters(ids, datas)
        self.sync()
        t0 = time.perf_counter()
        if together:
            results = self.runner.run_batch(ctxs, reps)
        else:
            results = []
            for ctx, rep in zip(ctxs, reps, strict=True):
                self.runner.reset_peak_memory()
                results.append(self.runner.run(ctx, rep))
                self.runner.after_job()
        for rep in reps:
            rep.flush()
        self.sync()
        wall = time.perf_counter() - t0
        for pub in pubs:
            pub.close()
        for r in results:
            if isinstance(r, Exception):
                raise r
        return wall, results

    def runner_rates(self) -> dict[str, Any]:
        datas = [job_data(self.model, self.size, self.args.steps, i, self.args.previews) for i in range(self.n)]
        self.run_jobs(datas[:2], together=True)  # warm-up of the batched path
        alone, together = [], []
        for _ in range(self.args.rounds):
            alone.append(self.run_jobs(datas, together=False)[0])
            together.append(self.run_jobs(datas, together=True)[0])
        return {"alone_s": med(alone), "together_s": med(together)}

    def peak_memory(self) -> dict[int, tuple[str, int]]:
        """The runner's peak memory of a run at batch 1 and batch N (the second run of each)."""
        out: dict[int, tuple[str, int]] = {}
        for rows in (1, self.n):
            datas = [job_data(self.model, self.size, self.args.steps, i, self.args.previews) for i in range(rows)]
            for _ in range(2):
                self.runner.after_job()
                self.runner.reset_peak_memory()
                self.run_jobs(datas, together=rows > 1)
                out[rows] = self.runner.peak_memory()
        return out

    def lora_switch(self, model_dir: Path, cuda: bool) -> list[list[Any]]:
        """Two LoRAs alternating job after job: hot-swapped (kept as adapters) against loaded and
        deleted on every switch (an adapter cache of 0), and jobs without a LoRA."""
        for i, lora_id in enumerate(("bench-la", "bench-lb")):
            make_lora(self.settings, model_dir, lora_id, seed=i, device="cuda" if cuda else "cpu")
        n = self.args.lora_jobs
        order = ["bench-la" if i % 2 == 0 else "bench-lb" for i in range(n)]
        adapters = self.runner.adapters

        switch: list[float] = []  # seconds of each job's LoRA switch (GenerationRunner._set_lora)
        set_lora = self.runner._set_lora

        def timed_set_lora(*a: Any, **kw: Any) -> str:
            t0 = time.perf_counter()
            try:
                return set_lora(*a, **kw)
            finally:
                self.sync()
                switch.append(time.perf_counter() - t0)

        self.runner._set_lora = timed_set_lora  # type: ignore[method-assign]

        def jobs(loras: Sequence[str | None]) -> tuple[list[float], int]:
            times = []
            loads0 = adapters.loads
            switch.clear()
            for i, lora in enumerate(loras):
                data = job_data(self.model, self.size, self.args.steps, i, self.args.previews, lora=lora)
                times.append(self.run_jobs([data], together=False)[0])
            return times, adapters.loads - loads0

        jobs([None])  # warm-up (when the parts before were skipped)
        plain, _ = jobs([None] * n)  # before any LoRA is loaded: the pipeline as it was
        plain_switch = med(switch)
        jobs(["bench-la", "bench-lb"])  # warm-up: both loaded once
        hot, hot_loads = jobs(order)
        hot_switch = med(switch)
        count = adapters.max_count
        adapters.max_count = 0  # as DASH_LORA_CACHE_COUNT=0: only the LoRA in use stays loaded
        try:
            jobs(["bench-la"])
            cold, cold_loads = jobs(["bench-lb" if i % 2 == 0 else "bench-la" for i in range(n)])
            cold_switch = med(switch)
        finally:
            adapters.max_count = count
            self.runner._set_lora = set_lora  # type: ignore[method-assign]
        base = med(plain)
        rows = [
            ["no LoRA", f"{base:.3f}", "0", f"{plain_switch * 1000:.1f} ms", "-"],
            ["two LoRAs alternating, hot-swapped (adapter cache, default)", f"{med(hot):.3f}", str(hot_loads),
             f"{hot_switch * 1000:.1f} ms", f"{(med(hot) - base) * 1000:+.0f} ms"],
            ["two LoRAs alternating, loaded + deleted per switch (adapter cache 0)", f"{med(cold):.3f}",
             str(cold_loads), f"{cold_switch * 1000:.1f} ms", f"{(med(cold) - base) * 1000:+.0f} ms"],
        ]
        return rows

    def after_job_s(self) -> float:
        """What the worker's `runner.after_job()` (between passes, before the outcome goes back) takes."""
        times = []
        for _ in range(3):
            self.sync()
            t0 = time.perf_counter()
            self.runner.after_job()
            self.sync()
            times.append(time.perf_counter() - t0)
        return med(times)

    def close(self) -> None:
        import torch

        self.runner.close()
        del self.pipe
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------- through Ray
class RayRig:
    """An embedded Redis and a local Ray (loopback) for the bench; both stopped by `close()`."""

    def __init__(self, root: Path, settings: Any, cuda: bool) -> None:
        from dash_ray.queues import EmbeddedRedis
        from dash_ray.scheduler import queue_specs
        from dash_ray.scheduler.cluster import init_ray

        self.redis = EmbeddedRedis(root / "redis", server=settings.redis_server)
        self.url = self.redis.start()
        try:
            specs = [s for s in queue_specs(settings) if s.name == "generation"]
            init_ray(settings, specs, num_cpus=os.cpu_count() or 2, num_gpus=1 if cuda else None)
        except BaseException:
            self.redis.stop()
            raise

    def close(self) -> None:
        import ray

        try:
            ray.shutdown()
        finally:
            self.redis.stop()


class RaySide:
    """One fresh Scheduler (its own key prefix) serving `generation` with one worker."""

    def __init__(self, rig: RayRig, settings_kw: dict[str, Any], max_batch: int) -> None:
        from dash_ray.queues import JobStore, connect
        from dash_ray.testing import start_scheduler

        self.prefix = f"gb{uuid.uuid4().hex[:8]}"
        self.sched = start_scheduler(rig.url, self.prefix, ("generation",), real=True, generation_max_batch=max_batch,
                                     **settings_kw)
        self.redis = connect(rig.url)
        self.store = JobStore(self.redis, prefix=self.prefix, queues=("generation",))

    async def wait_final(self, ids: list[str], timeout_s: float) -> list[Any]:
        from dash_ray.models.status import is_final

        deadline = time.monotonic() + timeout_s
        views: dict[str, Any] = {}
        # One read a poll (the first job not seen final; a pass ends its jobs together): the wall
        # time comes from the jobs' own finish times, and polling harder would take CPU from the worker.
        while True:
            for job_id in ids:
                if job_id not in views:
                    v = await self.store.get(job_id)
                    if not is_final(v.status):
                        break
                    views[job_id] = v
            if len(views) == len(ids):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(ids) - len(views)} of {len(ids)} jobs not done after {timeout_s:.0f}s")
            await asyncio.sleep(0.05)
        out = [views[i] for i in ids]
        bad = [v for v in out if v.status != "completed"]
        if bad:
            raise RuntimeError(f"job {bad[0].id} {bad[0].status}: {bad[0].error}")
        return out

    async def round(self, datas: list[dict[str, Any]], prefill: bool = False, timeout_s: float = 600) -> dict[str, Any]:
        """Submit the jobs (at once, or into the paused queue then resume); seconds from the first
        submit (the resume) to the last completion, and the results."""
        if prefill:
            await self.store.pause("generation")
            ids = [(await self.store.add("generation", d)).job.id for d in datas]
            t0 = time.time()
            await self.store.resume("generation")
        else:
            t0 = time.time()
            ids = [r.job.id for r in await asyncio.gather(*(self.store.add("generation", d) for d in datas))]
        views = await self.wait_final(ids, timeout_s)
        last = max(v.finished_at or time.time() for v in views)
        return {"wall_s": last - t0, "results": [v.result for v in views], "views": views, "t0": t0,
                "began": [await self.worker_began(i) for i in ids]}

    async def worker_began(self, job_id: str) -> float | None:
        """When the worker began the job (its `started` event)."""
        from dash_ray.testing import events

        return next((e["ts"] for e in await events(self.store, job_id) if e.get("type") == "job:progress"
                     and str(e.get("message", "")).startswith("started")), None)

    async def first_step(self, data: dict[str, Any], timeout_s: float = 600) -> dict[str, Any]:
        """A lone job: seconds from its submit to its first step's event, and its result."""
        from dash_ray.testing import events

        t0 = time.time()
        job_id = (await self.store.add("generation", data)).job.id
        [view] = await self.wait_final([job_id], timeout_s)
        evs = await events(self.store, job_id)
        step = next((e["ts"] for e in evs if e.get("type") == "job:progress" and (e.get("step") or 0) >= 1), None)
        return {"s": (step - t0) if step else float("nan"), "result": view.result}

    async def worker_cold(self) -> dict[str, Any]:
        stats = (await asyncio.to_thread(self.sched.stats))["generation"]
        detail = stats.get("worker_detail") or [{}]
        return dict(detail[0].get("cold") or {})

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.redis.aclose()
        await asyncio.to_thread(self.sched.stop, 5)


async def ray_measure(rig: RayRig, settings_kw: dict[str, Any], model: str, size: int, max_batch: int,
                      args: argparse.Namespace, paired: Any = None) -> dict[str, Any]:
    """A fresh scheduler: its cold first job, a warm-up round, warm lone jobs, then the rounds
    (each batched round after a `paired()` measurement, when given: seconds of diffusers directly)."""
    n, steps = args.jobs, args.steps
    side = RaySide(rig, settings_kw, max_batch)
    try:
        cold = await side.first_step(job_data(model, size, steps, 0, args.previews))
        phases = await side.worker_cold()
        datas = [job_data(model, size, steps, i, args.previews) for i in range(n)]
        await side.round(datas)  # warm-up round (the batched path's first pass)
        warm = [await side.first_step(job_data(model, size, steps, i, args.previews)) for i in range(args.warm)]
        burst, prefill, pairs = [], [], []
        if paired is not None:
            await asyncio.to_thread(paired)  # warm-up
        for _ in range(args.rounds):
            if paired is not None:
                pairs.append(await asyncio.to_thread(paired))
            burst.append(await side.round(datas))
            if max_batch > 1:
                prefill.append(await side.round(datas, prefill=True))
        stats = (await asyncio.to_thread(side.sched.stats))["generation"]
        return {"cold": cold, "phases": phases, "warm": warm, "burst": burst, "prefill": prefill, "stats": stats,
                "paired": pairs}
    finally:
        await side.close()


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not rounds:
        return None
    return sorted(rounds, key=lambda r: r["wall_s"])[len(rounds) // 2]


def where_time_goes(r: dict[str, Any]) -> str:
    """A Ray round's time by part, summed over its passes: submit to taken by the consumer (the
    batch window included), taken to begun on the worker (the Ray hand-off), the runner's pass (the
    pipeline call; the rest: events, PNG encoding, artifact writes), and the pass's end to its jobs'
    completion (the worker's after_job, the outcome back through Ray, the consumer's writes)."""
    passes: dict[float, list[int]] = {}
    for i, res in enumerate(r["results"]):
        key = round(float((res.get("timings") or {}).get("generate_s", 0)), 4)  # a pass's jobs share it
        passes.setdefault(key, []).append(i)
    views, began = r["views"], r["began"]
    parts = {"wait": 0.0, "handoff": 0.0, "runner": 0.0, "pipeline": 0.0, "after": 0.0}
    rows = []
    for idx in passes.values():
        taken = min(views[i].started_at or r["t0"] for i in idx)
        start = min((began[i] for i in idx if began[i]), default=taken)
        t = [r["results"][i]["timings"] for i in idx]
        run = max(float(x.get("total_s", 0)) for x in t)
        end = max(views[i].finished_at or 0.0 for i in idx)
        rows.append((taken, start, run, float(t[0].get("generate_s", 0)), end))
    prev = r["t0"]
    for taken, start, run, gen, end in sorted(rows):
        parts["wait"] += max(0.0, taken - prev)
        parts["handoff"] += max(0.0, start - taken)
        parts["runner"] += run
        parts["pipeline"] += gen
        parts["after"] += max(0.0, end - start - run)
        prev = end
    wall = r["wall_s"]
    n = len(rows)
    return (f"{wall:.2f} s, {n} pass(es): submit to taken {parts['wait'] * 1000:.0f} ms; hand-off to the worker "
            f"{parts['handoff'] * 1000:.0f} ms; runner {parts['runner']:.2f} s (pipeline call {parts['pipeline']:.2f} s, "
            f"events/PNG/artifact writes {(parts['runner'] - parts['pipeline']) * 1000:.0f} ms); pass end to "
            f"completed {parts['after'] * 1000:.0f} ms ({parts['after'] / n * 1000:.0f} ms a pass)")


# --------------------------------------------------------------------------- main
def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round, 3 warm latency samples, 4 LoRA jobs")
    ap.add_argument("--models", default=None, help="comma list of tiny, sd15, sdxl (default: sd15,sdxl on CUDA, "
                                                   "tiny on the CPU)")
    ap.add_argument("--sizes", default=None, help="comma list of px (default: 512,1024; tiny: 64)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=8, help="compatible jobs per round (the batch)")
    ap.add_argument("--rounds", type=int, default=None, help="measured rounds per path (median; default 3)")
    ap.add_argument("--warm", type=int, default=None, help="warm lone jobs for the latency (default 5)")
    ap.add_argument("--lora-jobs", type=int, default=None, help="jobs per LoRA mode (default 6)")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch threads of the worker and of this process on the CPU (default 1, as the tests)")
    ap.add_argument("--no-previews", dest="previews", action="store_false",
                    help="jobs with previewEvery 0 (default: dash-ray's default previews)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: direct, runner, ray, lora, memory")
    args = ap.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.warm = args.warm or (3 if args.quick else 5)
    args.lora_jobs = args.lora_jobs or (4 if args.quick else 6)
    args.skip = {s for s in args.skip.split(",") if s}
    return args


def main() -> None:
    args = parse()
    import torch

    from dash_ray.config import load_settings
    from dash_ray.services import TINY_SD
    from dash_ray.workers.tiny import ensure_tiny

    cuda = torch.cuda.is_available()
    threads = args.torch_threads or 1
    if not cuda:
        torch.set_num_threads(threads)
    models = [m for m in (args.models or ("sd15,sdxl" if cuda else "tiny")).split(",") if m]
    device = torch.cuda.get_device_name(0) if cuda else "CPU"
    if cuda:
        print(f"device: {device} (CUDA {torch.version.cuda}), torch {torch.__version__}, fp16")
    else:
        print(f"device: CPU ({os.cpu_count()} cores, torch threads {threads}); no CUDA device: these are CPU "
              f"figures of the built-in `tiny` model at 64 px, not GPU figures")
        if any(m in GPU_MODELS for m in models):
            print(f"  skipped: {', '.join(m for m in models if m in GPU_MODELS)} (needs a CUDA device)")
        models = [m for m in models if m not in GPU_MODELS]
    print(f"{args.jobs} compatible jobs a round (different prompts and seeds), {args.steps} steps, guidance 7.5, "
          f"{args.rounds} round(s) per path (median), previews {'on (the default)' if args.previews else 'off'}")

    root = Path(tempfile.mkdtemp(prefix="dash-gpu-bench-"))
    paths: dict[str, str] = {}
    t_all = time.perf_counter()
    rig: RayRig | None = None
    tables: dict[str, list[list[Any]]] = {k: [] for k in ("rates", "ratios", "latency", "lora", "memory", "time")}
    try:
        for m in models:
            if m in GPU_MODELS:
                t0 = time.perf_counter()
                params = build_model(m, root / "models" / m, "cuda")
                paths[m] = str(root / "models" / m)
                print(f"built {m}: UNet {params / 1e6:.0f}M parameters, fp16, in {time.perf_counter() - t0:.0f}s")
            elif m != TINY_SD:
                raise SystemExit(f"unknown model {m!r} (tiny, sd15, sdxl)")
        common = {"data_dir": root / "data", "artifacts_url": str(root / "artifacts"), "models": paths,
                  "allowed_file_dirs": [str(root)], "torch_threads": threads, "worker_idle_s": 600}
        settings = load_settings(key_prefix="gpubench", **common)
        if TINY_SD in models:
            ensure_tiny(TINY_SD, settings.models_dir)  # built before any worker needs it
        ray_kw = {**common, "generation_concurrency": 1, "generation_gpu_fraction": 1.0}

        for m in models:
            sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([64] if m == TINY_SD else [512, 1024])
            model_dir = Path(paths.get(m) or settings.models_dir / m)
            for size in sizes:
                print(f"\n== {m} at {size} px ({time.perf_counter() - t_all:.0f}s so far)", flush=True)
                n = args.jobs
                rate: dict[str, float] = {}
                ip = InProcess(settings, m, size, args, cuda)
                try:
                    if "direct" not in args.skip:
                        d = ip.direct_rates()
                        rate["direct1"], rate["directN"] = n / d["batch1_s"], n / d["batchN_s"]
                        tables["rates"].append([m, size, f"diffusers directly, batch 1 ({n} calls)",
                                                f"{rate['direct1']:.2f}", f"{d['batch1_s']:.2f}", "-"])
                        tables["rates"].append([m, size, f"diffusers directly, batch {n} (1 call)",
                                                f"{rate['directN']:.2f}", f"{d['batchN_s']:.2f}", "-"])
                        tables["time"].append([m, size, f"PNG encoding of {n} images (not in the direct rows)",
                                               f"{d['png_s'] * 1000:.0f} ms"])
                        print(f"  direct: batch 1 {rate['direct1']:.2f} img/s, batch {n} {rate['directN']:.2f} img/s",
                              flush=True)
                    if "runner" not in args.skip:
                        r = ip.runner_rates()
                        tables["rates"].append([m, size, f"dash-ray's runner in this process, {n} jobs one by one",
                                                f"{n / r['alone_s']:.2f}", f"{r['alone_s']:.2f}", f"{n}x1"])
                        tables["rates"].append([m, size, f"dash-ray's runner in this process, run_batch of {n}",
                                                f"{n / r['together_s']:.2f}", f"{r['together_s']:.2f}", f"1x{n}"])
                        print(f"  runner: alone {n / r['alone_s']:.2f} img/s, together {n / r['together_s']:.2f} "
                              f"img/s", flush=True)
                    tables["time"].append([m, size, "runner.after_job() (free_memory: gc.collect, cache release) in "
                                           "this process", f"{ip.after_job_s() * 1000:.0f} ms a call"])
                    if "memory" not in args.skip:
                        peaks = ip.peak_memory()
                        for rows, (kind, peak) in peaks.items():
                            what = "allocator peak, models included" if kind == "cuda" else "resident memory growth"
                            tables["memory"].append([m, size, rows, f"{peak / 2**20:,.1f} MiB", f"{kind}: {what}"])
                    if "lora" not in args.skip:
                        for row in ip.lora_switch(model_dir, cuda):
                            tables["lora"].append([m, size, *row])
                        print("  LoRA switching measured", flush=True)
                finally:
                    ip.close()

                if "ray" in args.skip:
                    continue
                if rig is None:
                    t0 = time.perf_counter()
                    rig = RayRig(root, load_settings(**ray_kw), cuda)
                    print(f"  local Ray + embedded Redis up in {time.perf_counter() - t0:.1f}s", flush=True)
                got = {}
                # diffusers at batch N once before each batched round, in this process (Ray up): paired
                ip2 = InProcess(settings, m, size, args, cuda) if "direct" not in args.skip else None
                try:
                    for mb in (1, n):
                        got[mb] = asyncio.run(ray_measure(rig, ray_kw, m, size, mb, args,
                                                          paired=ip2.direct_n_s if ip2 and mb > 1 else None))
                finally:
                    if ip2 is not None:
                        ip2.close()
                for mb in (1, n):
                    b = median_round(got[mb]["burst"])
                    assert b is not None
                    print(f"  ray, max_batch {mb}: {n / b['wall_s']:.2f} img/s (passes {passes_of(b['results'])})",
                          flush=True)
                off, on = median_round(got[1]["burst"]), median_round(got[n]["burst"])
                pre = median_round(got[n]["prefill"])
                assert off is not None and on is not None
                rate["off"], rate["on"] = n / off["wall_s"], n / on["wall_s"]
                tables["rates"].append([m, size, "dash-ray via Ray, batching off (DASH_GENERATION_MAX_BATCH=1)",
                                        f"{rate['off']:.2f}", f"{off['wall_s']:.2f}", passes_of(off["results"])])
                tables["rates"].append([m, size, f"dash-ray via Ray, batching on (={n}), {n} submitted at once",
                                        f"{rate['on']:.2f}", f"{on['wall_s']:.2f}", passes_of(on["results"])])
                if pre is not None:
                    rate["pre"] = n / pre["wall_s"]
                    tables["rates"].append([m, size, f"dash-ray via Ray, batching on, {n} waiting (timed from resume)",
                                            f"{rate['pre']:.2f}", f"{pre['wall_s']:.2f}", passes_of(pre["results"])])
                if got[n]["paired"]:
                    rate["directN_ray"] = n / med(got[n]["paired"])
                    tables["rates"].append([m, size, f"diffusers directly, batch {n} (1 call), alternating with "
                                            "the batched rounds above (same machine load)",
                                            f"{rate['directN_ray']:.2f}", f"{med(got[n]['paired']):.2f}", "-"])
                ratio = [m, size, f"{rate['on'] / rate['off']:.2f}x"]
                ratio.append(f"{rate['on'] / rate['directN']:.2f}x" if "directN" in rate else "-")
                ratio.append(f"{rate['on'] / rate['directN_ray']:.2f}x" if "directN_ray" in rate else "-")
                ratio.append(f"{rate['pre'] / rate['directN']:.2f}x" if "directN" in rate and "pre" in rate else "-")
                ratio.append(f"{rate['directN'] / rate['direct1']:.2f}x" if "directN" in rate else "-")
                tables["ratios"].append(ratio)
                tables["time"].append([m, size, f"batched round via Ray ({n} at once)", where_time_goes(on)])
                tables["time"].append([m, size, "unbatched round via Ray", where_time_goes(off)])
                for mb in (1, n):
                    g = got[mb]
                    ph = g["phases"]
                    t = g["cold"]["result"].get("timings", {})
                    phases = "/".join(f"{ph.get(k, float('nan')):.2f}" for k in ("processS", "importS", "loadS",
                                                                                "readyS"))
                    warm = [w["s"] for w in g["warm"]]
                    wq = med([float(w["result"]["timings"].get("queuedS") or 0) for w in g["warm"]])
                    wf = med([float(w["result"]["timings"].get("firstStepS") or 0) for w in g["warm"]])
                    tables["latency"].append([
                        m, size, f"max_batch {mb}", f"{g['cold']['s']:.2f} s",
                        f"{t.get('queuedS', float('nan')):.2f} / {t.get('coldStartS', float('nan')):.2f} / "
                        f"{t.get('firstStepS', float('nan')):.3f}", phases,
                        f"{med(warm) * 1000:.0f} ms (n={len(warm)}; {min(warm) * 1000:.0f}-{max(warm) * 1000:.0f})",
                        f"{wq * 1000:.0f} / {wf * 1000:.0f} ms"])
    finally:
        if rig is not None:
            rig.close()
        shutil.rmtree(root, ignore_errors=True)

    print(f"\n# Results ({device}; {time.perf_counter() - t_all:.0f}s in all)\n")
    if tables["rates"]:
        print(f"a. images/s, {args.jobs} compatible jobs, {args.steps} steps (median of {args.rounds} round(s); "
              "passes: jobs per pipeline call)\n")
        print(md(["model", "px", "path", "images/s", "s per round", "passes"], tables["rates"]))
    if tables["ratios"]:
        print()
        print(md(["model", "px", "dash-ray batched / unbatched (target >= 2x)",
                  f"dash-ray batched / direct batch {args.jobs} (target >= 0.9x)",
                  f"... / direct batch {args.jobs}, paired with the rounds",
                  f"... {args.jobs} waiting / direct batch {args.jobs}",
                  f"direct batch {args.jobs} / direct batch 1"], tables["ratios"]))
    if tables["time"]:
        print("\nwhere the time goes\n")
        print(md(["model", "px", "round", "time"], tables["time"]))
    if tables["latency"]:
        print("\nb. enqueue-to-first-step latency (cold: a fresh scheduler's first job; warm: lone jobs on the warm "
              "worker)\n")
        print(md(["model", "px", "scheduler", "cold: submit to first step",
                  "cold job's queuedS / coldStartS / firstStepS (s)",
                  "worker start processS/importS/loadS/readyS (s)", "warm: submit to first step (median)",
                  "warm queuedS / firstStepS (median)"], tables["latency"]))
    if tables["lora"]:
        print(f"\nc. LoRA switching in the runner (no Ray), {args.lora_jobs} jobs per mode, rank 8\n")
        print(md(["model", "px", "jobs", "median job (s)", "LoRA loads", "the switch itself (median)",
                  "job vs no LoRA (noisy)"], tables["lora"]))
    if tables["memory"]:
        print("\nd. peak memory of one worker's run (the runner's peak_memory(), second run of each)\n")
        print(md(["model", "px", "batch", "peak", "measured as"], tables["memory"]))


if __name__ == "__main__":
    main()
