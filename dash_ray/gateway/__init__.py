"""The gateway: a FastAPI app (REST + WebSocket) served by a Ray Serve deployment."""

from dash_ray.gateway.app import create_app
from dash_ray.gateway.auth import Principal, TokenAuth
from dash_ray.gateway.services import GatewayServices

__all__ = ["GatewayServices", "Principal", "TokenAuth", "create_app"]
