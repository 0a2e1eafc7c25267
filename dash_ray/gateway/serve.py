"""Ray Serve wiring: the gateway deployment (N stateless replicas) and the scheduler supervisor."""

from __future__ import annotations

import logging
from typing import Any

from ray import serve
from ray.serve import Application

from dash_ray.config import Settings, load_settings
from dash_ray.gateway.app import create_app
from dash_ray.gateway.services import GatewayServices
from dash_ray.scheduler.cluster import Scheduler
from dash_ray.scheduler.resources import QueueSpec, queue_specs

__all__ = ["Gateway", "SchedulerSupervisor", "app_builder", "build_app"]

log = logging.getLogger(__name__)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
class SchedulerSupervisor:
    """Owns the queue consumer actors (one per queue); Serve restarts it, and so them, if it dies."""

    def __init__(self, settings: Settings, redis_url: str, specs: list[QueueSpec]) -> None:
        self.scheduler = Scheduler(settings, redis_url, specs)
        self.scheduler.start()

    def stats(self) -> dict[str, Any]:
        return self.scheduler.stats()

    def drain(self, timeout_s: float) -> dict[str, Any]:
        return self.scheduler.stop(timeout_s)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=5000)
@serve.ingress()
class Gateway:
    """REST + WebSocket; keeps no job state, so any replica serves any client."""

    def __init__(self, settings: Settings, redis_url: str, queues: tuple[str, ...], scheduler: Any = None) -> None:
        logging.basicConfig(level=logging.INFO)
        self.services = GatewayServices.create(settings, redis_url, queues=queues)
        self.services.scheduler = scheduler  # type: ignore[attr-defined]

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.services)


def build_app(settings: Settings, redis_url: str, specs: list[QueueSpec] | None = None) -> Application:
    """The Serve application: gateway replicas plus the scheduler supervisor."""
    specs = specs if specs is not None else queue_specs(settings, sleep_queue=settings.enable_sleep_queue)
    supervisor = SchedulerSupervisor.bind(settings, redis_url, specs)
    queues = tuple(s.name for s in specs)
    return Gateway.options(num_replicas=settings.gateway_replicas).bind(settings, redis_url, queues, supervisor)


def app_builder(args: dict[str, str]) -> Application:
    """`serve run dash_ray.gateway.serve:app_builder` / deployments/dash.yaml: settings from the environment.

    On a cluster, Redis must be reachable from every node: set REDIS_URL (or REDIS_HOST...).
    """
    settings = load_settings(**{k: v for k, v in (args or {}).items()})
    url = settings.resolved_redis_url()
    if url is None:
        raise RuntimeError("set REDIS_URL (or REDIS_HOST/REDIS_PORT) to a Redis every node can reach")
    return build_app(settings, url)
