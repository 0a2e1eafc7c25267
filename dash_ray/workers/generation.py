"""Text-to-image generation with diffusers: progress per step, cancel between steps, optional LoRA."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from dash_ray.errors import WorkerError
from dash_ray.models.payloads import GenerationJob
from dash_ray.runners import JobContext, Reporter
from dash_ray.services.registry import lora_path
from dash_ray.workers.base import TorchRunner
from dash_ray.workers.images import png_bytes
from dash_ray.workers.previews import image_data_url, latent_preview

__all__ = ["GenerationRunner"]

log = logging.getLogger(__name__)


class GenerationRunner(TorchRunner):
    """`generation` queue: AutoPipelineForText2Image (SD 1.5 / SDXL class) from the model registry."""

    def run(self, job: JobContext, reporter: Reporter) -> dict[str, Any]:
        """Generate `numImages` images; returns their artifact URLs, the seed and timings."""
        import torch
        from diffusers import AutoPipelineForText2Image

        p = GenerationJob.model_validate(job.data)
        s = p.settings
        t0 = time.perf_counter()
        name, pipe = self.pipeline(s.model, AutoPipelineForText2Image)
        load_s = self.timings["load_s"]
        reporter.log(f"model {name} {'loaded in ' + format(load_s, '.2f') + ' s' if load_s else 'warm'}")
        seed = s.seed if s.seed is not None else secrets.randbelow(2**32)
        adapter = None
        if s.lora_id:
            adapter = self._load_lora(pipe, p.user_id or "", s.lora_id, s.lora_weight)
            reporter.log(f"LoRA {s.lora_id} applied (weight {s.lora_weight:g})")
        steps = s.steps
        every = max(1, round(steps / 10)) if s.preview_every is None else s.preview_every
        reporter.log(f"{s.width}x{s.height}, {steps} steps, {s.num_images} image(s), seed {seed}")

        def on_step(_pipe: Any, i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            step = i + 1
            if every and step % every == 0 and step < steps and "latents" in kwargs:
                latents = kwargs["latents"]
                reporter.preview(lambda: image_data_url(latent_preview(latents)), step=step, steps=steps)
            reporter.progress(100.0 * step / steps, f"step {step}/{steps}", step=step, steps=steps,
                              milestone=True)
            return kwargs

        reporter.progress(0, f"generating with {name}", step=0, steps=steps)
        t1 = time.perf_counter()
        try:
            with self.dropping_models_on_oom(), torch.inference_mode():
                out = pipe(
                    prompt=p.prompt,
                    negative_prompt=s.negative_prompt or None,
                    num_inference_steps=steps,
                    guidance_scale=s.guidance_scale,
                    width=s.width,
                    height=s.height,
                    num_images_per_prompt=s.num_images,
                    generator=self.generator(seed),
                    callback_on_step_end=on_step,
                )
        finally:
            if adapter:
                pipe.unload_lora_weights()
        gen_s = time.perf_counter() - t1
        urls = []
        for i, img in enumerate(out.images):
            rel = self.artifacts.put(f"{p.user_id}/{job.id}/image-{i}.png", png_bytes(img))
            urls.append(self.artifacts.url_for(rel))
        return {
            "images": urls, "seed": seed, "model": name, "width": s.width, "height": s.height,
            "steps": steps, "lora": s.lora_id, "modelLoads": self.cache.loads,
            "timings": {"load_s": round(load_s, 4), "generate_s": round(gen_s, 4),
                        "per_step_s": round(gen_s / steps, 5), "total_s": round(time.perf_counter() - t0, 4)},
        }

    def _load_lora(self, pipe: Any, user_id: str, lora_id: str, weight: float) -> str:
        rel = lora_path(user_id, lora_id)
        if not self.artifacts.exists(rel):
            raise WorkerError(f"no trained LoRA {lora_id!r}")
        with self.artifacts.open(rel) as f:
            data = f.read()
        from safetensors.torch import load as load_safetensors

        state = load_safetensors(data)
        adapter = f"lora_{lora_id}"
        pipe.load_lora_weights(state, adapter_name=adapter)
        pipe.set_adapters([adapter], adapter_weights=[weight])
        return adapter
