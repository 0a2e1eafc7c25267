"""The Serve composition: gateway replicas and the scheduler supervisor on one Ray cluster.

`build_app` is what `dash-ray up`, `serve run dash_ray.app:app_builder` and the tests deploy.
This module sits above the gateway and the scheduler and is the one place that joins them.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from typing import Any, cast

import uvicorn
from ray import serve
from ray.serve import Application

from dash_ray import runtime
from dash_ray.config import Settings, load_settings
from dash_ray.gateway.app import create_app
from dash_ray.gateway.services import GatewayServices
from dash_ray.scheduler.cluster import Scheduler
from dash_ray.scheduler.resources import QueueSpec, head_options, logical_gpus, queue_specs

__all__ = ["Gateway", "SchedulerSupervisor", "app_builder", "build_app", "node_gpus", "run_gateway", "wait_healthy"]


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
class SchedulerSupervisor:
    """Owns the queue consumer actors (one per queue); Serve restarts it, and so them, if it dies."""

    def __init__(self, settings: Settings, redis_url: str, specs: list[QueueSpec]) -> None:
        runtime.setup()
        self.scheduler = Scheduler(settings, redis_url, specs)
        self.scheduler.start()

    def stats(self) -> dict[str, Any]:
        return self.scheduler.stats()

    def drain(self, timeout_s: float) -> dict[str, Any]:
        return self.scheduler.stop(timeout_s)


def _reuseport_socket(host: str, port: int) -> socket.socket:
    """A listening socket that other replicas on this node may bind too (the kernel spreads clients)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=5000)
@serve.ingress()
class Gateway:
    """REST + WebSocket; keeps no job state, so any replica serves any client.

    With `DASH_INGRESS=direct` (the default) each replica runs its own HTTP server on
    host:port; with `serve`, Serve's proxy forwards requests to the replicas.
    """

    def __init__(self, settings: Settings, redis_url: str, queues: tuple[QueueSpec, ...], scheduler: Any = None) -> None:
        runtime.setup()
        self.settings = settings
        # The queues' definitions, not just their names: a plug-in queue's definition joins this
        # replica's table as it arrives (as it does in the consumer actors), so its routes and
        # views know it even where DASH_QUEUE_PLUGINS was set only for the driver.
        self.services = GatewayServices.create(settings, redis_url, queues=tuple(q.name for q in queues))
        # Tagged with Serve's replica id (`x-dash-replica`, pong): the same name as in Serve's logs
        # and its actor (SERVE_REPLICA::<app>#Gateway#<id>).
        self.services.metrics.replica = serve.get_replica_context().replica_id.unique_id
        self.scheduler = scheduler  # held so that Serve deploys the supervisor with the gateway
        self.server: uvicorn.Server | None = None
        if settings.ingress == "direct":
            self._serve_directly()

    def _serve_directly(self) -> None:
        app = create_app(self.services)
        config = uvicorn.Config(app, log_level="warning", access_log=False, ws="websockets-sansio", lifespan="on",
                                ws_per_message_deflate=False, timeout_keep_alive=30,
                                ws_max_size=self.settings.max_ws_frame_bytes)  # refused by the protocol layer
        self.server = uvicorn.Server(config)
        sock = _reuseport_socket(self.settings.host, self.settings.websocket_port)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name="dash-gateway-http")
        self._thread.start()

    def check_health(self) -> None:
        """Serve's health check: a replica whose HTTP server stopped is replaced. (A Redis outage
        is not the replica's fault: `/healthz` answers 503 then, and the replica recovers.)"""
        if self.server is not None and not self._thread.is_alive():
            raise RuntimeError("the gateway's HTTP server stopped")

    def __serve_build_asgi_app__(self) -> Any:
        if self.server is not None:
            # Serve's own ASGI path is unused (no proxy); keep the services on one event loop.
            from fastapi import FastAPI

            return FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        return create_app(self.services)

    def __del__(self) -> None:
        if self.server is not None:
            self.server.should_exit = True


def build_app(settings: Settings, redis_url: str, specs: list[QueueSpec] | None = None,
              scheduler: bool = True) -> Application:
    """The Serve application: gateway replicas plus (unless `scheduler=False`) the scheduler supervisor."""
    specs = specs if specs is not None else queue_specs(settings)
    # @serve.deployment adds .bind/.options, unseen by mypy.
    supervisor = None
    if scheduler:
        supervisor = cast(Any, SchedulerSupervisor).options(
            ray_actor_options={"num_cpus": 0, **head_options(settings.control_on_head)},
        ).bind(settings, redis_url, specs)
    queues = tuple(specs)
    placement: dict[str, Any] = {}
    if settings.gateway_max_per_node:
        placement["max_replicas_per_node"] = settings.gateway_max_per_node
    gateway = cast(Any, Gateway).options(
        num_replicas=settings.gateway_replicas,
        ray_actor_options={"num_cpus": 0, **head_options(settings.gateway_on_head)}, **placement)
    return cast(Application, gateway.bind(settings, redis_url, queues, supervisor))


def node_gpus(settings: Settings, specs: list[QueueSpec]) -> float:
    """GPUs of the local node: DASH_NUM_GPUS, else the CUDA devices, else enough logical ones
    for every queue to fill its slots (a GPU-less machine still runs every queue)."""
    if settings.num_gpus is not None:
        return float(settings.num_gpus)
    try:
        from dash_ray.workers.cache import cuda_devices

        if devices := cuda_devices():
            return float(devices)
    except Exception:  # installed without the workers extra, or CUDA unusable
        pass
    return logical_gpus(specs)


def wait_healthy(base_url: str, timeout_s: float = 60.0) -> None:
    """Block until `base_url`/healthz answers 200; the last error once `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def run_gateway(settings: Settings, app: Application, name: str, timeout_s: float = 60.0) -> str:
    """Start Serve for `settings.ingress` (no proxy when the replicas serve the port themselves),
    run `app` as `name` and wait until it answers; returns its base URL."""
    if settings.ingress == "direct":
        serve.start(proxy_location="Disabled")
    else:
        serve.start(http_options={"host": settings.host, "port": settings.websocket_port})
    serve.run(app, name=name, route_prefix="/", blocking=False)
    base = f"http://{settings.host}:{settings.websocket_port}"
    wait_healthy(base, timeout_s)
    return base


def app_builder(args: dict[str, str]) -> Application:
    """`serve run dash_ray.app:app_builder` / deployments/dash.yaml: settings from the environment.

    On a cluster, Redis must be reachable from every node: set REDIS_URL (or REDIS_HOST...).
    """
    settings = load_settings(**{k: v for k, v in (args or {}).items()})
    url = settings.resolved_redis_url()
    if url is None:
        raise RuntimeError("set REDIS_URL (or REDIS_HOST/REDIS_PORT) to a Redis every node can reach")
    return build_app(settings, url)
