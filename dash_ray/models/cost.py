"""How big a job is, for ETAs and memory sizing: a shape (jobs of one shape take the same time
per unit) and its units.

Each queue declares its rule on its definition (`QueueDef.cost`, models/queues.py); the rules of
the built-in queues are here. A queue whose jobs all cost the same says so with `flat_cost`: there
is no fallback, so a queue without a rule is a mistake caught when its definition is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = [
    "CostRule",
    "FamilyRule",
    "cost_family",
    "cost_shape",
    "flat_cost",
    "generation_cost",
    "generation_family",
    "seconds_cost",
    "training_cost",
    "training_family",
    "upscaling_cost",
]

# A payload (its wire dict, camelCase) -> (shape, units).
CostRule = Callable[[dict[str, Any]], tuple[str, float]]
# A payload -> (family, scale): shapes of one family cost the same per unit x scale (a model's
# generations per step and megapixel), so a shape never run gets a cost from its family's.
FamilyRule = Callable[[dict[str, Any]], tuple[str, float]]


def _num(value: Any, default: float) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if out > 0 else default


def _settings(data: dict[str, Any]) -> dict[str, Any]:
    raw = data.get("settings")
    return raw if isinstance(raw, dict) else {}


def generation_cost(data: dict[str, Any]) -> tuple[str, float]:
    """Generation: shaped by model and size, in steps x images."""
    s = _settings(data)
    shape = f"{s.get('model') or '-'}:{s.get('width', 512)}x{s.get('height', 512)}"
    return shape, _num(s.get("steps"), 30) * _num(s.get("numImages"), 1)


def generation_family(data: dict[str, Any]) -> tuple[str, float]:
    """Generation: a model's jobs cost about the same per step, image and megapixel."""
    s = _settings(data)
    return f"{s.get('model') or '-'}", _num(s.get("width"), 512) * _num(s.get("height"), 512) / 1e6


def training_family(data: dict[str, Any]) -> tuple[str, float]:
    """Training: a base model's runs cost about the same per epoch, image and megapixel of
    resolution (at one rank or another: the adapter is small beside the model)."""
    s = _settings(data)
    return f"{s.get('baseModel') or '-'}", _num(s.get("resolution"), 512) ** 2 / 1e6


def training_cost(data: dict[str, Any]) -> tuple[str, float]:
    """Training: shaped by base model, resolution and rank, in epochs x images."""
    s = _settings(data)
    images = data.get("imageUrls")
    n = len(images) if isinstance(images, list) and images else 1
    shape = f"{s.get('baseModel') or '-'}:{s.get('resolution', 512)}:r{s.get('rank', 8)}"
    return shape, _num(s.get("epochs"), 10) * n


def upscaling_cost(data: dict[str, Any]) -> tuple[str, float]:
    """Upscaling: shaped by model and scale, one unit a job."""
    return f"{data.get('model') or 'lanczos'}:x{data.get('scale', 4)}", 1.0


def seconds_cost(data: dict[str, Any]) -> tuple[str, float]:
    """The test queue: one shape, in the seconds a job asks for (`durationS`)."""
    return "-", _num(data.get("durationS"), 1.0)


def flat_cost(data: dict[str, Any]) -> tuple[str, float]:
    """Every job alike: one shape, one unit (the explicit choice of a queue without a measure)."""
    return "-", 1.0


def cost_family(queue: str, data: dict[str, Any]) -> tuple[str, float] | None:
    """(family, scale) of a payload of `queue`, by its definition's `cost_family` rule; None for
    a queue without one."""
    from dash_ray.models.queues import queue_def

    rule = queue_def(queue).cost_family
    return None if rule is None else rule(data)


def cost_shape(queue: str, data: dict[str, Any]) -> tuple[str, float]:
    """(shape, units) of a payload of `queue`, by the rule its definition declares; UnknownQueue
    for a queue the table does not have."""
    from dash_ray.models.queues import queue_def  # the table imports the rules above

    return queue_def(queue).cost(data)
