"""A lost head's GCS with Ray's GCS fault tolerance (an external Redis for the GCS:
`RAY_REDIS_ADDRESS`), on a multi-node Ray of this machine (`ray.cluster_utils.Cluster`: a head and
a GPU node raylet). The GCS process is killed mid-load and started again: the consumer actor
and its workers keep running through the outage (jobs submitted meanwhile run on the workers
already there), the cluster takes new work after the restart, every job runs once, and a
scheduler started again (as `dash-ray up` after a head restart) finds the same consumer: no
second one takes jobs."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dash_ray.queues import JobStore, connect
from dash_ray.testing import free_port, start_scheduler
from tests.cluster.conftest import GPU_NODE
from tests.cluster.conftest import connect as connect_ray

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (Debian's)")


@pytest.fixture(scope="module")
def ft_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A head whose GCS keeps its state in a Redis of its own (started here, stopped by PID), plus
    one GPU node."""
    import ray
    from ray.cluster_utils import Cluster

    from dash_ray import runtime

    root = tmp_path_factory.mktemp("gcs-redis")
    port = free_port()
    gcs_redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", str(root)], stdout=subprocess.DEVNULL)
    from redis import Redis

    before = os.environ.get("RAY_REDIS_ADDRESS")
    try:
        deadline = time.monotonic() + 30
        while True:  # it answers before the head's GCS connects to it
            try:
                if Redis(port=port, socket_timeout=1).ping():
                    break
            except Exception:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)
        os.environ["RAY_REDIS_ADDRESS"] = f"127.0.0.1:{port}"
        runtime.loopback_ray()
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 2, "num_gpus": 0, "include_dashboard": False, "gcs_server_port": free_port(),
            "_system_config": {"gcs_rpc_server_reconnect_timeout_s": 60, "health_check_period_ms": 500,
                               "health_check_failure_threshold": 20}})
        cluster.add_node(**GPU_NODE)
        cluster.wait_for_nodes()
        connect_ray(cluster.address)
        try:
            yield cluster
        finally:
            ray.shutdown()
            cluster.shutdown()
    finally:
        if before is None:
            os.environ.pop("RAY_REDIS_ADDRESS", None)
        else:
            os.environ["RAY_REDIS_ADDRESS"] = before
        gcs_redis.kill()
        gcs_redis.wait(10)


async def _until(store: JobStore, done: int, timeout_s: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while True:
        counts = await store.counts("sleep")
        if counts["completed"] >= done or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.1)


async def test_the_gcs_killed_mid_load_loses_no_job_and_runs_none_twice(ft_cluster: Any, redis_url: str, prefix: str,
                                                                        tmp_path: Path) -> None:
    import ray

    runs = tmp_path / "runs"
    runs.mkdir()
    sched = start_scheduler(redis_url, prefix, ("sleep",), runner={"record_dir": str(runs)}, worker_idle_s=600)
    store = JobStore(connect(redis_url), prefix=prefix, queues=("sleep",))
    try:
        consumer = ray.get_actor(sched.actor_name("sleep"), namespace="dash")
        ids = [(await store.add("sleep", {"userId": "u", "durationS": 0.3})).job.id for _ in range(20)]
        assert (await _until(store, 5, 60))["completed"] >= 5
        killed = time.monotonic()
        ft_cluster.head_node.kill_gcs_server()
        ids += [(await store.add("sleep", {"userId": "u", "durationS": 0.3})).job.id for _ in range(10)]
        # while the GCS is down the consumer and its workers run on: every job so far completes,
        # those submitted during the outage too
        assert (await _until(store, len(ids), 60))["completed"] == len(ids)
        ft_cluster.head_node.start_gcs_server()
        restarted = time.monotonic()
        ids += [(await store.add("sleep", {"userId": "u", "durationS": 0.3})).job.id for _ in range(10)]
        counts = await _until(store, len(ids), 120)
        print(f"gcs down {restarted - killed:.1f} s; all {len(ids)} jobs done {time.monotonic() - restarted:.1f} s "
              "after its restart")
        assert counts["completed"] == len(ids) and counts["failed"] == 0, counts
        ran = [len((runs / i).read_text().splitlines()) if (runs / i).exists() else 0 for i in ids]
        assert ran == [1] * len(ids), dict(zip(ids, ran, strict=True))
        # a scheduler started again finds the same consumer: one takes the queue's jobs
        again = start_scheduler(redis_url, prefix, ("sleep",), runner={"record_dir": str(runs)}, worker_idle_s=600)
        assert again.actors["sleep"]._actor_id == consumer._actor_id
        named = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"] == sched.actor_name("sleep")]
        assert len(named) == 1, named
    finally:
        await store.redis.aclose()
        sched.stop(drain_timeout_s=2)
