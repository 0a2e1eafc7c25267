"""Built-in `tiny` models: small Stable Diffusion class pipelines built from configs (random weights).

They let the whole flow run offline on any machine (tests, `dash-ray up` on a laptop): nothing
is downloaded. Built once, saved with `save_pretrained` under the data dir, then loaded like any
local model.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from dash_ray.services.registry import TINY_SD, TINY_UPSCALER

__all__ = ["build_tiny_sd", "build_tiny_upscaler", "ensure_tiny", "tiny_tokenizer"]

log = logging.getLogger(__name__)


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def tiny_tokenizer(path: Path) -> Any:
    """A byte-level CLIP tokenizer (no merges): every character is a token. Built in `path`
    (removed afterwards: the pipeline saves its own copy)."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=77)
    tok.save_pretrained(str(path))
    tokenizer = CLIPTokenizer.from_pretrained(str(path))
    shutil.rmtree(path, ignore_errors=True)
    return tokenizer


def _text_encoder(projection_dim: int | None = None) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    extra: dict[str, Any] = {"projection_dim": projection_dim, "hidden_act": "gelu"} if projection_dim else {}
    config = CLIPTextConfig(
        bos_token_id=512, eos_token_id=513, pad_token_id=513, hidden_size=32, intermediate_size=37,
        layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000,
        max_position_embeddings=77, **extra,
    )
    return CLIPTextModel(config)


def build_tiny_sd(path: Path, seed: int = 0) -> None:
    """A tiny StableDiffusionPipeline (64 px, ~1M-parameter UNet) saved to `path`."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[32, 64, 64, 64], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4, sample_size=64,
    )
    torch.manual_seed(seed)
    text_encoder = _text_encoder()
    tokenizer = tiny_tokenizer(path / "_tok")
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1)
    pipe: Any = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(path), safe_serialization=True)


def build_tiny_upscaler(path: Path, seed: int = 0) -> None:
    """A tiny StableDiffusionUpscalePipeline (x4, SD x4-upscaler class) saved to `path`."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 32, 64), layers_per_block=1, sample_size=32, in_channels=7, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, use_linear_projection=True,
        only_cross_attention=(True, True, False), num_class_embeds=100,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[32, 32, 64], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
        latent_channels=4, scaling_factor=0.08333,
    )
    torch.manual_seed(seed)
    text_encoder = _text_encoder(projection_dim=512)
    tokenizer = tiny_tokenizer(path / "_tok")
    pipe: Any = StableDiffusionUpscalePipeline(
        unet=unet, low_res_scheduler=DDPMScheduler(), scheduler=DDIMScheduler(prediction_type="v_prediction"),
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, max_noise_level=350,
    )
    pipe.save_pretrained(str(path), safe_serialization=True)


_BUILDERS = {TINY_SD: build_tiny_sd, TINY_UPSCALER: build_tiny_upscaler}


def ensure_tiny(name: str, models_dir: Path) -> Path:
    """The folder of a built-in tiny model, building it once (safe across processes)."""
    target = models_dir / name
    if (target / "model_index.json").exists():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with open(models_dir / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (target / "model_index.json").exists():
                return target
            tmp = models_dir / f".{name}.building"
            shutil.rmtree(tmp, ignore_errors=True)
            log.info("building the built-in %r model in %s (once)", name, target)
            _BUILDERS[name](tmp)
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(lock, fcntl.LOCK_UN)
    return target
