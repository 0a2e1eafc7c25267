"""The Python client: `Client` (plain Python, notebooks) and `AsyncClient` (asyncio).

Light by design: httpx, websockets, pydantic and tqdm; no server code, torch or Ray, so
`pip install dash-ray` is enough for a notebook (`dash-ray[notebook]` adds Pillow and
matplotlib for images and loss curves).
"""

from __future__ import annotations

from dash_ray.client.aio import (
    AsyncClient,
    AsyncJobHandle,
    Event,
    image_ref,
    job_image,
    previous_image,
)
from dash_ray.client.errors import (
    ApiError,
    Conflict,
    Forbidden,
    InvalidPayload,
    JobFailed,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
)
from dash_ray.client.sync import Client, JobHandle
from dash_ray.client.webhooks import verify_webhook

__all__ = [
    "ApiError",
    "AsyncClient",
    "AsyncJobHandle",
    "Client",
    "Conflict",
    "Event",
    "Forbidden",
    "InvalidPayload",
    "JobFailed",
    "JobHandle",
    "NotFound",
    "RateLimited",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "image_ref",
    "job_image",
    "previous_image",
    "verify_webhook",
]
