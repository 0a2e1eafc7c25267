"""Multi-node Ray on this machine, on loopback: `ray.cluster_utils.Cluster` (a head and two GPU
node raylets). These modules run before the rest of the session (tests/conftest.py orders them):
each connects this process to its own cluster and disconnects when it is done."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dash_ray.testing import start_scheduler

# A GPU node as cluster.yaml's 1-GPU type declares it (dash_sleep: the test queue's slots too).
GPU_NODE = {"num_cpus": 1, "num_gpus": 1, "resources": {"dash_generation": 5, "dash_sleep": 5}}


def connect(address: str) -> None:
    """Connect this process to a cluster (none may be connected: see the module docstring)."""
    import ray

    from dash_ray import runtime
    from dash_ray.scheduler.cluster import NAMESPACE

    if ray.is_initialized():
        raise RuntimeError("this process is already connected to a Ray: the cluster tests must run first")
    runtime.loopback_ray()
    ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)


@pytest.fixture(scope="module")
def gpu_cluster() -> Iterator[Any]:
    """A CPU head plus two GPU nodes of one logical GPU each (5 generation slots apiece)."""
    import ray
    from ray.cluster_utils import Cluster

    from dash_ray import runtime

    runtime.loopback_ray()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "num_gpus": 0, "include_dashboard": False,
        # a node that stops answering is declared dead within ~2 s
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4,
                           "health_check_timeout_ms": 500}})
    cluster.gpu_nodes = [cluster.add_node(**GPU_NODE) for _ in range(2)]  # type: ignore[attr-defined]
    cluster.wait_for_nodes()
    connect(cluster.address)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture
def cluster_scheduler(gpu_cluster: Any, redis_url: str, prefix: str,
                      tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Factory: a Scheduler on the cluster whose queues run the sleep runner, recording every
    execution in `tmp_path/runs/<job id>`."""
    (tmp_path / "runs").mkdir()
    made: list[Any] = []

    def make(queues: tuple[str, ...] = ("generation",), runner: dict[str, Any] | None = None,
             **overrides: Any) -> Any:
        sched = start_scheduler(redis_url, prefix, queues, runner={"record_dir": str(tmp_path / "runs"), **(runner or {})},
                                **overrides)
        made.append(sched)
        return sched

    yield make
    for sched in made:
        sched.stop(drain_timeout_s=2)

