"""dash-ray: a Ray-based GPU job scheduler for AI image services.

`import dash_ray` is light: it loads the models, never torch or Ray; `dash_ray.Client` and
`dash_ray.AsyncClient` load the client (httpx, websockets) when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dash_ray.errors import DashError
from dash_ray.models import (
    GenerationJob,
    GenerationSettings,
    JobOptions,
    JobView,
    TrainingJob,
    TrainingSettings,
    UpscalingJob,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from dash_ray.client import AsyncClient, Client

__all__ = [
    "AsyncClient",
    "Client",
    "DashError",
    "GenerationJob",
    "GenerationSettings",
    "JobOptions",
    "JobView",
    "TrainingJob",
    "TrainingSettings",
    "UpscalingJob",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in ("Client", "AsyncClient"):
        from dash_ray import client

        return getattr(client, name)
    raise AttributeError(f"module 'dash_ray' has no attribute {name!r}")
