"""LoRA fine-tuning of a diffusers UNet with peft and accelerate; a checkpoint after every epoch."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from dash_ray.errors import JobCancelled, WorkerError
from dash_ray.models.payloads import TrainingJob
from dash_ray.runners import JobContext, Reporter
from dash_ray.services.registry import lora_path
from dash_ray.workers.base import TorchRunner
from dash_ray.workers.images import load_image
from dash_ray.workers.previews import image_data_url

__all__ = ["TrainingRunner"]

log = logging.getLogger(__name__)

TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]


def checkpoint_path(user_id: str, lora_id: str, job: JobContext) -> str:
    """Artifact path of a checkpoint written by this attempt: one file per attempt, so two
    attempts never write the same file; which one counts is the job's record in Redis."""
    tag = job.token[:16] if job.token else f"a{job.attempt}"
    return f"{user_id}/{lora_id}/checkpoint-{tag}.pt"


class TrainingRunner(TorchRunner):
    """`training` queue: `job:progress` at least once per epoch with epoch n/N and the loss."""

    def run(self, job: JobContext, reporter: Reporter) -> dict[str, Any]:
        """Train; returns the URL of `pytorch_lora_weights.safetensors` (stored under the loraId)."""
        import torch
        import torch.nn.functional as F
        from accelerate import Accelerator
        from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft import LoraConfig
        from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

        p = TrainingJob.model_validate(job.data)
        s = p.settings
        user = p.user_id or ""
        lora_id = p.lora_id or job.id
        t0 = time.perf_counter()
        seed = s.seed if s.seed is not None else 0
        torch.manual_seed(seed)

        reporter.progress(0, f"loading {len(p.image_urls)} image(s)")
        reporter.log(f"training LoRA {lora_id}: rank {s.rank}, {s.epochs} epochs, {len(p.image_urls)} image(s) "
                     f"at {s.resolution} px")
        pixels = self._images(p, torch)
        reporter.check()
        name, base = self.pipeline(s.base_model, StableDiffusionPipeline)  # frozen parts, cached
        _, loc = self.location(s.base_model)
        unet = UNet2DConditionModel.from_pretrained(loc, subfolder="unet")  # a fresh copy to train
        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=s.rank, lora_alpha=s.rank, init_lora_weights="gaussian",
                                    target_modules=TARGET_MODULES))
        unet.to(self.device)
        noise_scheduler = DDPMScheduler.from_config(base.scheduler.config)
        params = [q for q in unet.parameters() if q.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=s.learning_rate)

        start_epoch = 1
        ckpt_rel = checkpoint_path(user, lora_id, job)
        saved = reporter.saved_checkpoint()  # the last one an attempt of this job committed
        if saved and self.artifacts.exists(saved):
            with self.artifacts.open(saved) as f:  # tensors and plain values only: no code runs on load
                ckpt = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
            if ckpt.get("epochs") == s.epochs and ckpt.get("rank") == s.rank:
                set_peft_model_state_dict(unet, ckpt["lora"])
                optimizer.load_state_dict(ckpt["optimizer"])
                start_epoch = int(ckpt["epoch"]) + 1
                reporter.progress(100.0 * ckpt["epoch"] / s.epochs,
                                  f"resuming after epoch {ckpt['epoch']}/{s.epochs}",
                                  epoch=int(ckpt["epoch"]), epochs=s.epochs, loss=ckpt.get("loss"), milestone=True)

        mixed = "no" if self.device == "cpu" else ("bf16" if self.dtype == torch.bfloat16 else "fp16")
        accelerator = Accelerator(mixed_precision=mixed, cpu=self.device == "cpu")
        unet, optimizer = accelerator.prepare(unet, optimizer)

        with torch.no_grad():
            ids = base.tokenizer([p.prompt], padding="max_length", max_length=base.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids.to(self.device)
            text = base.text_encoder(ids)[0].float()
            vae = base.vae
            dist = vae.encode(pixels.to(self.device, dtype=vae.dtype)).latent_dist
            latents = (dist.mean * vae.config.scaling_factor).float()

        n = latents.shape[0]
        steps_per_epoch = math.ceil(n / s.batch_size)
        gen = torch.Generator().manual_seed(seed)
        loss_value = float("nan")
        unet.train()
        for epoch in range(start_epoch, s.epochs + 1):
            losses = []
            order = torch.randperm(n, generator=gen)
            for step in range(steps_per_epoch):
                idx = order[step * s.batch_size:(step + 1) * s.batch_size]
                x0 = latents[idx]
                noise = torch.randn(x0.shape, generator=gen).to(self.device)
                t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (x0.shape[0],), generator=gen)
                t = t.to(self.device)
                noisy = noise_scheduler.add_noise(x0, noise, t)
                target = (noise_scheduler.get_velocity(x0, noise, t)
                          if noise_scheduler.config.prediction_type == "v_prediction" else noise)
                with accelerator.autocast():
                    pred = unet(noisy, t, text.expand(x0.shape[0], -1, -1)).sample
                loss = F.mse_loss(pred.float(), target.float())
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
                reporter.progress(100.0 * (epoch - 1 + (step + 1) / steps_per_epoch) / s.epochs,
                                  f"epoch {epoch}/{s.epochs} step {step + 1}/{steps_per_epoch}",
                                  epoch=epoch, epochs=s.epochs, step=step + 1, steps=steps_per_epoch)
            loss_value = sum(losses) / len(losses)
            self._checkpoint(ckpt_rel, accelerator.unwrap_model(unet), optimizer, epoch, s, loss_value,
                             get_peft_model_state_dict, torch)
            try:
                replaced = reporter.commit_checkpoint(ckpt_rel)  # refused (and stops) if this attempt is stale
            except JobCancelled:
                self.artifacts.delete(ckpt_rel)
                raise
            if replaced and replaced != ckpt_rel:
                self.artifacts.delete(replaced)
            reporter.progress(100.0 * epoch / s.epochs, f"epoch {epoch}/{s.epochs} loss {loss_value:.4f}",
                              epoch=epoch, epochs=s.epochs, loss=round(loss_value, 6), milestone=True)
            reporter.log(f"epoch {epoch}/{s.epochs}: loss {loss_value:.6f}")
            if s.sample_every and epoch % s.sample_every == 0:
                reporter.preview(partial(self._sample, base, accelerator.unwrap_model(unet), p.prompt, s, seed),
                                 kind="sample", force=True, epoch=epoch, epochs=s.epochs)
            if epoch < s.epochs:  # asked to yield the GPU: stop here, resume from this checkpoint
                reporter.yield_point(f"epoch {epoch}/{s.epochs}")

        unet = accelerator.unwrap_model(unet)
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        with tempfile.TemporaryDirectory() as tmp:
            StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=layers, safe_serialization=True)
            data = (Path(tmp) / "pytorch_lora_weights.safetensors").read_bytes()
        rel = self.artifacts.put(lora_path(user, lora_id), data)
        for rel_ckpt in {ckpt_rel, saved} - {""}:
            self.artifacts.delete(rel_ckpt)
        return {"loraId": lora_id, "weights": self.artifacts.url_for(rel), "baseModel": name,
                "epochs": s.epochs, "resumedFromEpoch": start_epoch - 1, "loss": round(loss_value, 6),
                "timings": {"total_s": round(time.perf_counter() - t0, 3)}}

    def _images(self, p: TrainingJob, torch: Any) -> Any:
        import numpy as np
        from PIL import Image

        res = p.settings.resolution
        out = []
        for url in p.image_urls:
            img = load_image(url, self.settings, self.uploads_of(p.user_id))
            w, h = img.size
            side = min(w, h)
            img = img.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
            img = img.resize((res, res), Image.Resampling.BICUBIC)
            arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
            out.append(torch.from_numpy(arr).permute(2, 0, 1))
        if not out:
            raise WorkerError("imageUrls is empty")
        return torch.stack(out)

    def _sample(self, base: Any, unet: Any, prompt: str, s: Any, seed: int) -> str:
        """A sample image of `prompt` with the LoRA as trained so far, as a small data URL."""
        import torch
        from diffusers import StableDiffusionPipeline

        was_training = unet.training
        unet.eval()
        try:
            pipe: Any = StableDiffusionPipeline(**{**base.components, "unet": unet})
            pipe.set_progress_bar_config(disable=True)
            # the LoRA's unet trains in fp32; the frozen parts may be fp16 on a GPU
            mixed = (torch.autocast("cuda", dtype=base.unet.dtype) if self.device != "cpu"
                     else contextlib.nullcontext())
            with torch.inference_mode(), mixed:
                img = pipe(prompt, num_inference_steps=s.sample_steps, width=s.resolution, height=s.resolution,
                           generator=self.generator(seed)).images[0]
        finally:
            unet.train(was_training)
        img.thumbnail((256, 256))
        return image_data_url(img)

    def _checkpoint(self, rel: str, unet: Any, optimizer: Any, epoch: int, s: Any, loss: float,
                    get_state: Any, torch: Any) -> None:
        buf = io.BytesIO()
        torch.save({"lora": get_state(unet), "optimizer": optimizer.state_dict(), "epoch": epoch,
                    "epochs": s.epochs, "rank": s.rank, "loss": loss}, buf)
        self.artifacts.put(rel, buf.getvalue())
