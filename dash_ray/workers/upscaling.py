"""Upscaling x2 / x4: Lanczos (Pillow, no GPU) or a diffusers upscaler (SD x4 class)."""

from __future__ import annotations

import time
from typing import Any

from dash_ray.errors import WorkerError
from dash_ray.models.payloads import UpscalingJob
from dash_ray.runners import JobContext, Reporter
from dash_ray.services.artifacts import job_dir
from dash_ray.workers.base import TorchRunner
from dash_ray.workers.images import load_image, png_bytes

__all__ = ["UpscalingRunner"]

DIFFUSION_STEPS = 20


class UpscalingRunner(TorchRunner):
    """`upscaling` queue. The diffusers upscaler is x4; for x2 its output is resized down by half."""

    def run(self, job: JobContext, reporter: Reporter) -> dict[str, Any]:
        """Upscale `imageUrl`; returns the artifact URL and the new size."""
        p = UpscalingJob.model_validate(job.data)
        t0 = time.perf_counter()
        reporter.progress(0, "fetching the image")
        img = load_image(p.image_url, self.settings, self.uploads_of(p.user_id))
        w, h = img.size
        target = (w * p.scale, h * p.scale)
        if target[0] * target[1] > self.settings.max_image_pixels:
            raise WorkerError(f"result would be {target[0]}x{target[1]}, over {self.settings.max_image_pixels} pixels")
        reporter.progress(10, f"upscaling {w}x{h} x{p.scale} with {p.model}")
        from PIL import Image

        if p.model == "lanczos":
            out = img.resize(target, Image.Resampling.LANCZOS)
            reporter.progress(90, "resized", step=1, steps=1)
        else:
            out = self._diffusion(p, img, reporter)
            if out.size != target:
                out = out.resize(target, Image.Resampling.LANCZOS)
        rel = self.artifacts.put(f"{job_dir(str(p.user_id), job.id)}/upscaled.png", png_bytes(out))
        reporter.progress(100, f"upscaled to {out.size[0]}x{out.size[1]}")
        return {"image": self.artifacts.url_for(rel), "width": out.size[0], "height": out.size[1],
                "scale": p.scale, "model": p.model, "timings": {"total_s": round(time.perf_counter() - t0, 4)}}

    def _diffusion(self, p: UpscalingJob, img: Any, reporter: Reporter) -> Any:
        import torch
        from diffusers import StableDiffusionUpscalePipeline

        _name, pipe = self.pipeline(p.model, StableDiffusionUpscalePipeline)
        steps = DIFFUSION_STEPS

        # This pipeline has only the older `callback=` interface: progress and cancel go through it.
        def on_step(i: int, _t: Any, _latents: Any) -> None:
            reporter.progress(10 + 85.0 * (i + 1) / steps, f"step {i + 1}/{steps}", step=i + 1, steps=steps,
                              milestone=True)

        with self.dropping_models_on_oom(), torch.inference_mode():
            result = pipe(prompt="", image=img, num_inference_steps=steps, callback=on_step, callback_steps=1,
                          generator=self.generator(0))
        return result.images[0]
