"""Starting Ray (local or joining a cluster) and the scheduler's consumer actors."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, cast

from dash_ray import runtime
from dash_ray.config import Settings
from dash_ray.scheduler.demand import DEMAND_ACTOR
from dash_ray.scheduler.resources import QueueSpec, head_options, logical_gpus, node_resources

__all__ = ["NAMESPACE", "Scheduler", "init_ray", "record_local_ray", "stop_recorded_ray"]

log = logging.getLogger(__name__)

NAMESPACE = "dash"


def init_ray(settings: Settings, specs: list[QueueSpec], *, num_cpus: int | None = None,
             num_gpus: float | None = None) -> dict[str, Any]:
    """Join DASH_RAY_ADDRESS, or start a local Ray on loopback whose node offers the queues' slots
    and `num_gpus` GPUs (default: DASH_NUM_GPUS, else enough logical ones for the queues)."""
    import ray

    if ray.is_initialized():
        return dict(ray.cluster_resources())
    if settings.ray_address:
        ray.init(address=settings.ray_address, namespace=NAMESPACE, log_to_driver=False)
    else:
        runtime.loopback_ray()
        if num_gpus is None:
            num_gpus = settings.num_gpus if settings.num_gpus is not None else logical_gpus(specs)
        ray.init(
            address="local",
            namespace=NAMESPACE,
            num_cpus=num_cpus,
            num_gpus=num_gpus,  # type: ignore[arg-type]  # Ray takes fractional GPUs; its stub says int
            resources=node_resources(specs),
            include_dashboard=False,
            log_to_driver=False,
            # Ray starts its worker processes at niceness 15 so that its own daemons come first.
            # Here those workers are the node's workload (gateway replicas serving live sockets,
            # GPU workers) and share the machine with Redis at niceness 0.
            _system_config={"worker_niceness": settings.worker_niceness},
        )
        private_ray_token()
    return dict(ray.cluster_resources())


def private_ray_token(path: Path | None = None) -> None:
    """Make Ray's auth token file (`~/.ray/auth_token`) readable by its owner only (0600): Ray
    writes it with the default mode, and anyone who reads it can run code on the cluster."""
    token = path or Path.home() / ".ray" / "auth_token"
    try:
        if token.is_file() and not token.is_symlink() and token.stat().st_uid == os.getuid():
            token.chmod(0o600)
    except OSError:
        pass


def record_local_ray(path: Path) -> None:
    """Write the pids of the local Ray this process started (its GCS, raylet, agents) to `path`,
    so that the next `dash-ray up` on the same data dir can end them if this process is killed
    without cleaning up (a SIGKILLed driver leaves them running)."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    if node is None:
        return
    pids = sorted({p.pid for _kind, p in node.live_processes()})
    path.write_text("".join(f"{pid}\n" for pid in pids))


def stop_recorded_ray(path: Path, timeout_s: float = 10.0) -> int:
    """End the processes a previous run recorded with `record_local_ray` that are still Ray's
    (checked by their command line); returns how many were running."""
    try:
        pids = [int(x) for x in path.read_text().split()]
    except (OSError, ValueError):
        return 0
    running = [pid for pid in pids if _is_ray_process(pid)]
    for pid in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_is_ray_process(pid) for pid in running):
        time.sleep(0.1)
    for pid in running:
        if _is_ray_process(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        path.unlink()
    if running:
        log.warning("ended %d processes of a previous run's local Ray", len(running))
    return len(running)


def _is_ray_process(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"ray" in cmd or b"gcs_server" in cmd or b"raylet" in cmd


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
        self.demand: Any = None  # the cluster's DemandActor (autoscaling), shared by deployments

    def actor_name(self, queue: str) -> str:
        """The Ray name of a queue's consumer actor (one per queue and key prefix)."""
        return f"{self.name_prefix}:consumer:{queue}"

    def start(self, timeout_s: float = 60.0) -> None:
        """Create (or find) each queue's consumer actor and wait until they answer."""
        import ray

        from dash_ray.scheduler.actors import ConsumerActor, DemandActor

        on_head = head_options(self.settings.control_on_head)
        if self.settings.autoscale:
            # Detached: it outlives the deployment that made it, and serves every one on the cluster.
            self.demand = cast(Any, DemandActor).options(
                name=DEMAND_ACTOR, namespace=NAMESPACE, get_if_exists=True, lifetime="detached", **on_head).remote()
        for spec in self.specs:
            opts: dict[str, Any] = {"name": self.actor_name(spec.name), "namespace": NAMESPACE,
                                    "get_if_exists": True, **on_head}
            if self.detached:
                opts["lifetime"] = "detached"
            actor_cls = cast(Any, ConsumerActor)  # @ray.remote adds .options/.remote, unseen by mypy
            self.actors[spec.name] = actor_cls.options(**opts).remote(spec, self.settings, self.redis_url,
                                                                      self.demand)
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
        if self.demand is not None:  # this deployment wants no more nodes
            try:
                ray.get(self.demand.clear.remote(self.settings.key_prefix), timeout=10)
            except Exception:
                log.warning("could not withdraw the autoscaler request", exc_info=True)
        for a in self.actors.values():
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                log.debug("consumer already gone", exc_info=True)
        self.actors.clear()
        return out
