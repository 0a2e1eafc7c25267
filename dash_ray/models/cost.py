"""How big a job is, for ETAs: a shape (jobs of one shape take the same time per unit) and its units."""

from __future__ import annotations

from typing import Any

__all__ = ["cost_shape"]


def _num(value: Any, default: float) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if out > 0 else default


def cost_shape(queue: str, data: dict[str, Any]) -> tuple[str, float]:
    """(shape, units) of a payload: generation by model and size in steps x images; training by
    base model, resolution and rank in epochs x images; upscaling by model and scale; the test
    queue in seconds asked for."""
    raw = data.get("settings")
    s: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if queue == "generation":
        shape = f"{s.get('model') or '-'}:{s.get('width', 512)}x{s.get('height', 512)}"
        return shape, _num(s.get("steps"), 30) * _num(s.get("numImages"), 1)
    if queue == "training":
        images = data.get("imageUrls")
        n = len(images) if isinstance(images, list) and images else 1
        shape = f"{s.get('baseModel') or '-'}:{s.get('resolution', 512)}:r{s.get('rank', 8)}"
        return shape, _num(s.get("epochs"), 10) * n
    if queue == "upscaling":
        return f"{data.get('model') or 'lanczos'}:x{data.get('scale', 4)}", 1.0
    return "-", _num(data.get("durationS"), 1.0)
