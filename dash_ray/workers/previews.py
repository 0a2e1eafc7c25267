"""Cheap previews of a picture as it forms: latents to RGB by a linear map, no VAE decode."""

from __future__ import annotations

import base64
import io
from typing import Any

__all__ = ["SD_LATENT_RGB", "image_data_url", "latent_preview"]

# Stable Diffusion 1.x/2.x latents (4 channels) to RGB: the least-squares linear fit that
# latent-preview implementations use (each row: one latent channel's weight on R, G, B).
SD_LATENT_RGB = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)


def latent_preview(latents: Any, min_side: int = 64) -> Any:
    """A PIL image of the first latent of a batch ([B, C, h, w]): the SD linear map for 4 channels,
    else the first three channels normalised. Upscaled (nearest) to at least `min_side` pixels."""
    import torch
    from PIL import Image

    with torch.no_grad():
        lat = latents[0].detach().float().cpu()
        if lat.shape[0] == 4:
            rgb = torch.einsum("chw,cr->rhw", lat, torch.tensor(SD_LATENT_RGB))
            rgb = (rgb + 1.0) / 2.0
        else:
            rgb = lat[:3] if lat.shape[0] >= 3 else lat[:1].repeat(3, 1, 1)
            lo, hi = rgb.min(), rgb.max()
            rgb = (rgb - lo) / (hi - lo + 1e-6)
        arr = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    img = Image.fromarray(arr, "RGB")
    scale = max(1, -(-min_side // max(1, min(img.size))))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img


def image_data_url(img: Any, quality: int = 60) -> str:
    """A PIL image as a small WebP data URL."""
    buf = io.BytesIO()
    img.save(buf, format="WEBP", quality=quality, method=0)
    return "data:image/webp;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
