"""The gateway as a plain ASGI app, for `uvicorn --factory dash_ray.gateway.asgi:app` (no Ray Serve).

Settings come from the environment; Redis must be configured (REDIS_URL or REDIS_HOST).
"""

from __future__ import annotations

from fastapi import FastAPI

from dash_ray import runtime
from dash_ray.config import load_settings
from dash_ray.gateway.app import create_app
from dash_ray.gateway.services import GatewayServices

__all__ = ["app"]


def app() -> FastAPI:
    """Build the app from the environment."""
    runtime.setup()
    settings = load_settings()
    url = settings.resolved_redis_url()
    if url is None:
        raise RuntimeError("set REDIS_URL (or REDIS_HOST/REDIS_PORT) for the gateway")
    return create_app(GatewayServices.create(settings, url))
