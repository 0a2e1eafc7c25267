"""Text-to-image generation with diffusers: progress per step, cancel between steps, optional LoRA
(kept loaded as an adapter), and compatible jobs batched into one pass.

Row k of a job is drawn from its own generator seeded `seed + k`, alone or batched, so a job's
images do not depend on the jobs it shares a pass with (up to the float noise of batched kernels).
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from dash_ray.config import Settings
from dash_ray.errors import JobCancelled, WorkerError
from dash_ray.models.payloads import GenerationJob, GenerationSettings
from dash_ray.models.queues import generation_batch_key
from dash_ray.runners import JobContext, Reporter
from dash_ray.services.artifacts import job_dir
from dash_ray.services.registry import lora_path
from dash_ray.workers.adapters import AdapterCache, AdapterKey, file_version
from dash_ray.workers.base import TorchRunner
from dash_ray.workers.images import png_bytes
from dash_ray.workers.memory import out_of_memory
from dash_ray.workers.previews import image_data_url, latent_preview

__all__ = ["GenerationRunner"]

log = logging.getLogger(__name__)


class _AllCancelled(Exception):
    """Every job of a pass was cancelled: the pass stops at once."""


@dataclass
class _Job:
    """One job of a pass: its payload, reporter and seed; its rows start at `row`."""

    ctx: JobContext
    reporter: Reporter
    payload: GenerationJob
    seed: int
    row: int = 0
    cancelled: JobCancelled | None = None

    @property
    def settings(self) -> GenerationSettings:
        return self.payload.settings

    @property
    def rows(self) -> int:
        return self.payload.settings.num_images


class GenerationRunner(TorchRunner):
    """`generation` queue: AutoPipelineForText2Image (SD 1.5 / SDXL class) from the model registry."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.adapters = AdapterCache(settings.lora_cache_count, settings.lora_cache_bytes)
        self._oom_rows: dict[str, int] = {}  # shape -> rows of a batch that ran out of memory: fewer next time

    def run(self, job: JobContext, reporter: Reporter) -> dict[str, Any]:
        """Generate `numImages` images; returns their artifact URLs, the seed and timings."""
        return self._alone(self._job(job, reporter))

    def run_batch(self, jobs: list[JobContext], reporters: list[Reporter]) -> list[Any]:
        """Generate for compatible jobs in one pipeline call (as many rows as fit the memory);
        per job its result, or its exception (its cancel ends only its own rows)."""
        if len(jobs) <= 1:
            return super().run_batch(jobs, reporters)
        out: list[Any] = [None] * len(jobs)
        groups: dict[str, list[tuple[int, _Job]]] = {}
        for i, (ctx, reporter) in enumerate(zip(jobs, reporters, strict=True)):
            try:
                j = self._job(ctx, reporter)
            except Exception as exc:
                out[i] = exc
                continue
            groups.setdefault(generation_batch_key(j.payload), []).append((i, j))
        for group in groups.values():  # one group, unless the batch rule was bypassed
            for part in self._split(group):
                self._run_part(part, out)
        return out

    def preload(self, models: list[str]) -> None:
        """Load these models' pipelines into the cache (a failure is logged, left to the job)."""
        from diffusers import AutoPipelineForText2Image

        for model in models:
            try:
                self.pipeline(model or None, AutoPipelineForText2Image)  # "": the default model
            except Exception as exc:
                log.warning("preload of model %s failed: %s", model, exc)

    def loaded_models(self) -> list[str]:
        """The models held, then `lora:<userId>/<loraId>` per LoRA loaded on one of them."""
        self.adapters.prune(self._pipelines())
        return self.cache.names() + self.adapters.names()

    # --- passes ---
    def _job(self, ctx: JobContext, reporter: Reporter) -> _Job:
        p = GenerationJob.model_validate(ctx.data)
        seed = p.settings.seed if p.settings.seed is not None else secrets.randbelow(2**32)
        return _Job(ctx, reporter, p, seed)

    def _alone(self, j: _Job) -> dict[str, Any]:
        """One job's pass; out of memory, the cached models go and the error names the job's size."""
        import torch

        s = j.settings
        oom: BaseException | None = None
        try:
            with self.dropping_models_on_oom():
                [result] = self._generate([j])
        except torch.OutOfMemoryError as exc:
            # Only its text leaves this block: its traceback's frames hold the pass's tensors.
            oom = RuntimeError(str(exc))
        if oom is not None:
            peak = self.memory.peak()
            self.after_job()
            raise out_of_memory(oom, width=s.width, height=s.height, rows=s.num_images, peak=peak) from None
        if isinstance(result, Exception):
            raise result
        return result

    def _split(self, group: list[tuple[int, _Job]]) -> list[list[tuple[int, _Job]]]:
        """Consecutive parts of at most the rows that fit (a job is never split; one too big runs alone)."""
        shape = self._shape(group[0][1].settings)
        limit = self.memory.max_rows(shape, sum(j.rows for _, j in group))
        if shape in self._oom_rows:
            limit = max(1, min(limit, self._oom_rows[shape] - 1))
        parts: list[list[tuple[int, _Job]]] = []
        rows = 0
        for item in group:
            if not parts or rows + item[1].rows > limit:
                parts.append([])
                rows = 0
            parts[-1].append(item)
            rows += item[1].rows
        return parts

    def _run_part(self, part: list[tuple[int, _Job]], out: list[Any]) -> None:
        """Run one part, each job's outcome into its slot of `out`; out of memory, each job alone."""
        import torch

        jobs = [j for _, j in part]
        if len(jobs) == 1:
            out[part[0][0]] = self._attempt(jobs[0])
            return
        oom = ""
        try:
            results: list[Any] = self._generate(jobs)
        except torch.OutOfMemoryError as exc:
            # Only its text leaves this block: its traceback's frames hold the pass's tensors,
            # which must be gone before the jobs run again one at a time.
            oom = str(exc) or "out of memory"
        except Exception as exc:
            results = [j.cancelled or exc for j in jobs]
        if oom:
            rows, shape = sum(j.rows for j in jobs), self._shape(jobs[0].settings)
            self.memory.learn(shape, rows, self.memory.peak())  # CUDA: the refused allocation is not in it
            self._oom_rows[shape] = min(rows, self._oom_rows.get(shape, rows))
            self.after_job()
            log.warning("out of memory in a batch of %d jobs (%d images): running them alone: %s", len(jobs), rows,
                        oom.splitlines()[0])
            results = []
            for j in jobs:
                if j.cancelled is None:
                    j.reporter.log(f"out of memory in a batch of {len(jobs)} jobs ({rows} images): running alone",
                                   "warning")
                results.append(j.cancelled or self._attempt(j))
        for (i, _), result in zip(part, results, strict=True):
            out[i] = result

    def _attempt(self, j: _Job) -> Any:
        try:
            return self._alone(j)
        except Exception as exc:
            exc.__traceback__ = None  # kept until the pass ends: without the frames (and their tensors)
            return exc

    def _generate(self, jobs: list[_Job]) -> list[dict[str, Any] | Exception]:
        """One pipeline call for jobs of equal settings, each its own rows; per job its result, or
        the exception that ended it (its cancel; its files not written). A failure of the pass itself
        is raised."""
        import torch
        from diffusers import AutoPipelineForText2Image

        s = jobs[0].settings
        t0 = time.perf_counter()
        name, pipe = self.pipeline(s.model, AutoPipelineForText2Image)
        load_s = self.timings["load_s"]
        lora = self._set_lora(name, pipe, jobs[0].payload)
        total = 0
        for j in jobs:
            j.row, total = total, total + j.rows
        steps = s.steps
        for j in jobs:
            self._begin(j, name, load_s, lora, len(jobs), total)
        if all(j.cancelled for j in jobs):
            return [j.cancelled for j in jobs if j.cancelled]

        def on_step(_pipe: Any, i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            step = i + 1
            self.memory.check(f"step {step}")
            latents = kwargs.get("latents")
            for j in jobs:
                if j.cancelled is None:
                    self._step(j, step, latents)
            if all(j.cancelled for j in jobs):
                # Raised rather than `pipe._interrupt`, which skips the steps left but still decodes every row.
                raise _AllCancelled
            return kwargs

        prompts = [j.payload.prompt for j in jobs for _ in range(j.rows)]
        negatives = [j.settings.negative_prompt for j in jobs for _ in range(j.rows)]
        generators = [self.generator(j.seed + k) for j in jobs for k in range(j.rows)]
        self.memory.start()
        t1 = time.perf_counter()
        try:
            with torch.inference_mode():
                images = pipe(prompt=prompts, negative_prompt=negatives, num_inference_steps=steps,
                              guidance_scale=s.guidance_scale, width=s.width, height=s.height,
                              num_images_per_prompt=1, generator=generators, callback_on_step_end=on_step).images
        except _AllCancelled:
            return [j.cancelled for j in jobs if j.cancelled]
        self.memory.check("decoding")  # the VAE's peak comes after the last step (CPU: the simulated cap)
        self.memory.learn(self._shape(s), total, self.memory.peak())
        gen_s = time.perf_counter() - t1
        results: list[dict[str, Any] | Exception] = []
        for j in jobs:
            if j.cancelled is not None:
                results.append(j.cancelled)
                continue
            urls = []
            try:  # one job's files failing to be written fails that job only
                for k, img in enumerate(images[j.row:j.row + j.rows]):
                    rel = self.artifacts.put(f"{job_dir(str(j.payload.user_id), j.ctx.id)}/image-{k}.png", png_bytes(img))
                    urls.append(self.artifacts.url_for(rel))
            except Exception as exc:
                exc.__traceback__ = None
                results.append(exc)
                continue
            results.append({
                "images": urls, "seed": j.seed, "model": name, "width": s.width, "height": s.height,
                "steps": steps, "lora": s.lora_id, "modelLoads": self.cache.loads, "loraLoads": self.adapters.loads,
                "batch": len(jobs),
                "timings": {"load_s": round(load_s, 4), "generate_s": round(gen_s, 4),
                            "per_step_s": round(gen_s / steps, 5), "total_s": round(time.perf_counter() - t0, 4)},
            })
        return results

    def _begin(self, j: _Job, name: str, load_s: float, lora: str, jobs: int, rows: int) -> None:
        """A job's first log lines and progress (a job already cancelled is marked, not raised)."""
        s, r = j.settings, j.reporter
        r.log(f"model {name} {'loaded in ' + format(load_s, '.2f') + ' s' if load_s else 'warm'}")
        if lora:
            r.log(lora)
        r.log(f"{s.width}x{s.height}, {s.steps} steps, {s.num_images} image(s), seed {j.seed}")
        if jobs > 1:
            r.log(f"batched: {jobs} jobs, {rows} images in one pass")
        try:
            r.progress(0, f"generating with {name}", step=0, steps=s.steps)
        except JobCancelled as exc:
            j.cancelled = exc

    def _step(self, j: _Job, step: int, latents: Any) -> None:
        """A job's events for a finished step: a preview of its first row now and then, progress."""
        s, r = j.settings, j.reporter
        steps = s.steps
        every = max(1, round(steps / 10)) if s.preview_every is None else s.preview_every
        try:
            if every and step % every == 0 and step < steps and latents is not None:
                rows = latents[j.row:j.row + 1]
                r.preview(lambda: image_data_url(latent_preview(rows)), step=step, steps=steps)
            r.progress(100.0 * step / steps, f"step {step}/{steps}", step=step, steps=steps, milestone=True)
        except JobCancelled as exc:
            j.cancelled = exc

    # --- LoRA ---
    def _set_lora(self, name: str, pipe: Any, p: GenerationJob) -> str:
        """Switch the pipeline to the job's LoRA (loaded unless warm), or to none; the log line."""
        s = p.settings
        self.adapters.prune(self._pipelines())
        if not s.lora_id:
            self.adapters.disable(pipe)
            return ""
        user = p.user_id or ""
        rel = lora_path(user, s.lora_id)
        version = file_version(self.artifacts, rel)
        if version is None:
            raise WorkerError(f"no trained LoRA {s.lora_id!r}")

        def load() -> dict[str, Any]:
            from safetensors.torch import load as load_safetensors

            with self.artifacts.open(rel) as f:
                return load_safetensors(f.read())

        key = AdapterKey(f"{name}:{self.dtype}", user, s.lora_id, version)
        loaded = self.adapters.use(pipe, key, s.lora_weight, load)
        return f"LoRA {s.lora_id} {'loaded' if loaded else 'warm'}, applied (weight {s.lora_weight:g})"

    def _pipelines(self) -> list[Any]:
        return [e.value for e in list(self.cache.entries.values())]

    def _shape(self, s: GenerationSettings) -> str:
        """The memory guard's name for a pass's shape: model and size."""
        try:
            name = self.registry.resolve(s.model)[0]
        except KeyError:
            name = s.model or ""
        return f"{name}:{s.width}x{s.height}"
