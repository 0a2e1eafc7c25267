"""The workloads on the GPU: per-step time, dash-ray's overhead against calling diffusers directly,
and the time a warm model saves.

    bench/gpu_bench.sh            # or: python bench/gpu_bench.py [--steps 30] [--runs 3]

On CUDA it builds a small SD-class pipeline from configs (random weights, 512 px, nothing
downloaded). Without a GPU it falls back to the built-in 64 px `tiny` model on the CPU and says
so. The dash-ray side is the real worker path (runner + reporter publishing every step to Redis
through the publisher thread); REDIS_URL if set, else an embedded Redis.
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_small_sd(path: Path) -> None:
    """An SD-1.5-shaped pipeline, scaled down (UNet ~100M parameters), saved to `path`."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from dash_ray.workers.tiny import tiny_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(192, 384, 768, 768), layers_per_block=2, sample_size=64, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=512, attention_head_dim=8,
    )
    vae = AutoencoderKL(block_out_channels=[64, 128, 256, 256], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        latent_channels=4, sample_size=512)
    text = CLIPTextModel(CLIPTextConfig(bos_token_id=512, eos_token_id=513, pad_token_id=513, hidden_size=512,
                                        intermediate_size=2048, num_attention_heads=8, num_hidden_layers=6,
                                        vocab_size=1000, max_position_embeddings=77))
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text,
                                   tokenizer=tiny_tokenizer(path / "_tok"),
                                   scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                                    beta_end=0.012),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(path), safe_serialization=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    import torch

    from dash_ray.config import load_settings
    from dash_ray.queues import EmbeddedRedis, Keys, SyncLifecycle, connect_sync
    from dash_ray.scheduler.runner import JobContext, Publisher, Reporter

    cuda = torch.cuda.is_available()
    root = Path(tempfile.mkdtemp(prefix="dash-gpu-bench-"))
    redis_url = load_settings().resolved_redis_url()
    server = None
    if redis_url is None:
        server = EmbeddedRedis(root / "redis")
        redis_url = server.start()
    models = {}
    if cuda:
        build_small_sd(root / "small-sd")
        models["small-sd"] = str(root / "small-sd")
        size, model = 512, "small-sd"
        device = torch.cuda.get_device_name(0)
    else:
        size, model = 64, "tiny"
        device = "CPU (no CUDA device: the figures below are the CPU fallback, not GPU figures)"
    settings = load_settings(data_dir=root / "data", artifacts_url=str(root / "artifacts"), models=models,
                             key_prefix="gpubench")
    pub = Publisher(SyncLifecycle(connect_sync(redis_url), Keys("gpubench")))

    def run(runner: Any, queue: str, data: dict[str, Any], job_id: str) -> dict[str, Any]:
        job = JobContext(id=job_id, queue=queue, data=data, user_id="bench")
        rep = Reporter(job, pub, max_hz=settings.progress_max_hz)
        out = runner.run(job, rep)
        rep.flush()
        return out  # type: ignore[no-any-return]

    from dash_ray.workers.generation import GenerationRunner
    from dash_ray.workers.training import TrainingRunner
    from dash_ray.workers.upscaling import UpscalingRunner

    print(f"device: {device}; model {model} at {size}px, {args.steps} steps, {args.runs} runs each")
    gen = GenerationRunner(settings=settings)
    data = {"userId": "bench", "prompt": "a photo of a red fox in the snow",
            "settings": {"model": model, "steps": args.steps, "width": size, "height": size, "seed": 1}}
    t0 = time.perf_counter()
    cold = run(gen, "generation", data, "cold")
    cold_total = time.perf_counter() - t0
    warm_totals, runner_step = [], []
    quiet = {**data, "settings": {**data["settings"], "previewEvery": 0}}
    no_preview_step = []
    for i in range(args.runs):  # with the default previews, and the same path with them off, in turns
        t0 = time.perf_counter()
        out = run(gen, "generation", data, f"warm{i}")
        warm_totals.append(time.perf_counter() - t0)
        runner_step.append(out["timings"]["generate_s"] / args.steps)
        out = run(gen, "generation", quiet, f"quiet{i}")
        no_preview_step.append(out["timings"]["generate_s"] / args.steps)
    pipe = next(iter(gen.cache.entries.values())).value
    direct_step = []
    for _ in range(args.runs):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            pipe(prompt=data["prompt"], num_inference_steps=args.steps, width=size, height=size,
                 guidance_scale=7.5, generator=torch.Generator(device=gen.device).manual_seed(1))
        if cuda:
            torch.cuda.synchronize()
        direct_step.append((time.perf_counter() - t0) / args.steps)
    d, r = statistics.median(direct_step), statistics.median(runner_step)
    print("\ngeneration")
    print(f"  per step: diffusers directly {d * 1000:8.2f} ms   through dash-ray's runner {r * 1000:8.2f} ms"
          f"   overhead {(r - d) / d * 100:+.2f}%   (target <= 3%)")
    q = statistics.median(no_preview_step)
    print(f"  previews: at the default rate (every ~10% of steps, at most 2/s) {r * 1000:.2f} ms a step, "
          f"off {q * 1000:.2f} ms   cost {(r - q) / q * 100:+.2f}%   (target <= 3%)")
    print(f"  job time: cold (loads the model) {cold_total:.2f}s   warm {statistics.median(warm_totals):.2f}s"
          f"   a warm model saves {cold['timings']['load_s']:.2f}s of loading")
    from dash_ray.scheduler.sizing import sized_fraction

    gen.reset_peak_memory()
    run(gen, "generation", data, "peak")
    kind, peak = gen.peak_memory()
    total = gen.device_memory()
    if total:
        print(f"  memory: peak {peak / 2**30:.2f} GiB of {total / 2**30:.1f} GiB ({kind}); GPU fraction chosen "
              f"{sized_fraction([peak], total, settings.generation_gpu_fraction):.4g} (configured "
              f"{settings.generation_gpu_fraction:g}; training and upscaling size the same way)")
    else:
        print(f"  memory: peak RSS {peak / 2**20:.0f} MiB ({kind}); no GPU, so the configured fraction "
              f"{settings.generation_gpu_fraction:g} stays")

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size // 4, size // 4), (120, 60, 200)).save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    ups = UpscalingRunner(settings=settings)
    t0 = time.perf_counter()
    run(ups, "upscaling", {"userId": "bench", "imageUrl": url, "scale": 4}, "lanczos")
    lanczos_s = time.perf_counter() - t0
    run(ups, "upscaling", {"userId": "bench", "imageUrl": url, "scale": 4, "model": "tiny-upscaler"}, "up-cold")
    t0 = time.perf_counter()
    run(ups, "upscaling", {"userId": "bench", "imageUrl": url, "scale": 4, "model": "tiny-upscaler"}, "up-warm")
    up_s = time.perf_counter() - t0
    print("\nupscaling x4 of a", f"{size // 4}px image")
    print(f"  lanczos {lanczos_s * 1000:.1f} ms   diffusers upscaler (built-in tiny, 20 steps, warm) {up_s:.2f}s")

    tr = TrainingRunner(settings=settings)
    tdata = {"userId": "bench", "loraId": "bench-lora", "prompt": "sks fox", "imageUrls": [url] * 4,
             "settings": {"baseModel": model, "epochs": 3, "resolution": size, "batchSize": 1, "rank": 8}}
    t0 = time.perf_counter()
    tout = run(tr, "training", tdata, "bench-lora")
    t_s = time.perf_counter() - t0
    print("\ntraining (LoRA rank 8, 4 images, 3 epochs)")
    print(f"  {t_s:.2f}s total, {t_s / 12 * 1000:.0f} ms per step incl. loading and checkpoints; final loss {tout['loss']}")
    pub.close()
    if server:
        server.stop()


if __name__ == "__main__":
    main()
