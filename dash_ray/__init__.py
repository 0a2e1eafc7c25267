"""dash-ray: a Ray-based GPU job scheduler for AI image services.

`import dash_ray` is light: it loads the models, never torch or Ray.
"""

from __future__ import annotations

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

__all__ = [
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
