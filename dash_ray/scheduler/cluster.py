"""Starting Ray (local or joining a cluster) and the scheduler's consumer actors."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from dash_ray.config import Settings
from dash_ray.scheduler.resources import QueueSpec, logical_gpus, node_resources

__all__ = ["Scheduler", "init_ray", "local_node_gpus"]

log = logging.getLogger(__name__)

NAMESPACE = "dash"


def _loopback_only() -> None:
    """Keep a local Ray on 127.0.0.1 (Ray reads this when it picks the node address)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray._private.ray_constants as rc

    rc.ENABLE_RAY_CLUSTER = False


def local_node_gpus(settings: Settings, specs: list[QueueSpec]) -> float:
    """GPUs of the local node: DASH_NUM_GPUS, else the real count, else enough logical ones."""
    if settings.num_gpus is not None:
        return float(settings.num_gpus)
    try:
        from dash_ray.workers.cache import cuda_devices

        if devices := cuda_devices():
            return float(devices)
    except Exception:  # installed without the workers extra, or CUDA unusable
        pass
    return logical_gpus(specs)


def init_ray(settings: Settings, specs: list[QueueSpec], *, num_cpus: int | None = None,
             num_gpus: float | None = None) -> dict[str, Any]:
    """Join DASH_RAY_ADDRESS, or start a local Ray on loopback whose node offers the queues' slots."""
    import ray

    if ray.is_initialized():
        return dict(ray.cluster_resources())
    if settings.ray_address:
        ray.init(address=settings.ray_address, namespace=NAMESPACE, log_to_driver=False)
    else:
        _loopback_only()
        gpus = num_gpus if num_gpus is not None else local_node_gpus(settings, specs)
        ray.init(
            address="local",
            namespace=NAMESPACE,
            num_cpus=num_cpus,
            num_gpus=gpus,
            resources=node_resources(specs),
            include_dashboard=False,
            log_to_driver=False,
            # Ray starts its worker processes at niceness 15 so that its own daemons come first.
            # Here those workers are the node's workload (gateway replicas serving live sockets,
            # GPU workers) and share the machine with Redis at niceness 0.
            _system_config={"worker_niceness": settings.worker_niceness},
        )
    return dict(ray.cluster_resources())


class Scheduler:
    """The consumer actors of a set of queues: start them, read their stats, drain them."""

    def __init__(self, settings: Settings, redis_url: str, specs: list[QueueSpec], *,
                 detached: bool = False, name_prefix: str | None = None) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.specs = specs
        self.detached = detached
        self.name_prefix = name_prefix or settings.key_prefix
        self.actors: dict[str, Any] = {}

    def actor_name(self, queue: str) -> str:
        """The Ray name of a queue's consumer actor (one per queue and key prefix)."""
        return f"{self.name_prefix}:consumer:{queue}"

    def start(self, timeout_s: float = 60.0) -> None:
        """Create (or find) each queue's consumer actor and wait until they answer."""
        import ray

        from dash_ray.scheduler.actors import ConsumerActor

        for spec in self.specs:
            opts: dict[str, Any] = {"name": self.actor_name(spec.name), "namespace": NAMESPACE,
                                    "get_if_exists": True}
            if self.detached:
                opts["lifetime"] = "detached"
            self.actors[spec.name] = ConsumerActor.options(**opts).remote(spec, self.settings, self.redis_url)
        t0 = time.monotonic()
        ray.get([a.ready.remote() for a in self.actors.values()], timeout=timeout_s)
        log.info("scheduler up: %s in %.1fs", ", ".join(self.actors), time.monotonic() - t0)

    def stats(self) -> dict[str, Any]:
        """Each consumer's counters and workers."""
        import ray

        names = list(self.actors)
        return dict(zip(names, ray.get([self.actors[n].stats.remote() for n in names], timeout=30), strict=True))

    def drain(self, timeout_s: float | None = None) -> dict[str, Any]:
        """Stop taking jobs and let running ones finish (bounded); waiting jobs stay in Redis."""
        import ray

        timeout_s = self.settings.drain_timeout_s if timeout_s is None else timeout_s
        refs = {n: a.drain.remote(timeout_s) for n, a in self.actors.items()}
        out: dict[str, Any] = {}
        for name, ref in refs.items():
            try:
                out[name] = ray.get(ref, timeout=timeout_s + 15)
            except Exception as exc:
                out[name] = {"error": type(exc).__name__}
        return out

    def stop(self, drain_timeout_s: float | None = None) -> dict[str, Any]:
        """Drain, then end the consumer actors (their workers end with them)."""
        import ray

        out = self.drain(drain_timeout_s)
        for a in self.actors.values():
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                log.debug("consumer already gone", exc_info=True)
        self.actors.clear()
        return out
