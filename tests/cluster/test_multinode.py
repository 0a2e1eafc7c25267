"""The scheduler and the gateway on a Ray of three nodes (a head and two GPU nodes): slots add up
across nodes, a node lost mid-job loses no job, a socket moves between replicas on two nodes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from ray import serve

from dash_ray.queues import JobStore, connect
from tests.cluster.conftest import GPU_NODE
from tests.helpers import (
    all_done,
    assert_well_formed,
    events,
    executions,
    intervals,
    max_overlap,
    wait_for,
)

GEN = {"userId": "alice", "prompt": "a fox"}


async def test_generation_slots_of_two_gpu_nodes_add_up_to_ten_and_no_more(
        cluster_scheduler: Any, redis_url: str, prefix: str) -> None:
    sched = cluster_scheduler(runner={"duration_s": 2.0, "steps": 2}, max_pending_workers=10, worker_idle_s=600)
    store = JobStore(connect(redis_url), prefix=prefix, queues=("generation",))
    warm = [(await store.add("generation", GEN)).job.id for _ in range(10)]  # ten workers started
    await all_done(store, warm, 90)
    ids = [(await store.add("generation", GEN)).job.id for _ in range(40)]
    views = await all_done(store, ids, 120)
    assert {v.status for v in views} == {"completed"}
    spans = []
    for job_id in ids:
        evs = await events(store, job_id)
        assert_well_formed(evs)
        spans += intervals(evs)
    assert max_overlap(spans) == 10, max_overlap(spans)
    nodes = {w["node"] for w in (await asyncio.to_thread(sched.stats))["generation"]["worker_detail"]}
    assert len(nodes) == 2  # five workers on each GPU node


def _gateway_replicas(app: str) -> dict[str, dict[str, Any]]:
    """Serve's live gateway replicas of `app`: replica id -> {pid, node}."""
    import ray

    out = {}
    for info in ray._private.state.actors(actor_state_name="ALIVE").values():
        name = info.get("Name") or ""
        if name.startswith(f"SERVE_REPLICA::{app}#Gateway#"):
            out[name.rsplit("#", 1)[-1]] = {"pid": info["Pid"], "node": info["Address"]["NodeID"]}
    return out


def test_a_socket_moves_between_gateway_replicas_on_two_nodes_and_misses_no_event(
        gpu_cluster: Any, redis_url: str, prefix: str, tmp_path: Path) -> None:
    from ray import serve
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect as ws_connect

    from dash_ray.app import build_app, run_gateway
    from dash_ray.config import load_settings
    from dash_ray.gateway import TokenAuth
    from dash_ray.scheduler import RunnerSpec, queue_specs
    from dash_ray.scheduler.resources import with_runner
    from dash_ray.testing import free_port
    from tests.redis.conftest import SECRET

    port = free_port()
    settings = load_settings(key_prefix=prefix, token_secret=SECRET, data_dir=tmp_path, websocket_port=port,
                             gateway_replicas=2, gateway_on_head=False, gateway_max_per_node=1,
                             enable_sleep_queue=True)
    specs = [s for s in with_runner(queue_specs(settings, test_queues=True),
                                    RunnerSpec("dash_ray.scheduler.sleep:SleepRunner")) if s.name == "sleep"]
    base = run_gateway(settings, build_app(settings, redis_url, specs), "dash-mn")
    try:
        replicas = wait_replicas("dash-mn", 2)
        assert len({r["node"] for r in replicas.values()}) == 2, replicas  # one replica on each of two nodes
        token = TokenAuth(SECRET).mint("alice")
        import httpx

        job = httpx.post(f"{base}/v1/jobs/sleep", headers={"authorization": f"Bearer {token}"},
                         json={"durationS": 8, "steps": 40}, timeout=10).json()["id"]
        seqs: list[int] = []
        served_by: list[str] = []

        def follow(since: int) -> str | None:
            """Read the job's events until it ends (returns None) or the socket drops (its replica)."""
            try:
                with ws_connect(f"ws://127.0.0.1:{port}/ws?token={token}", open_timeout=10) as ws:
                    ws.send(json.dumps({"type": "ping"}))
                    ws.send(json.dumps({"type": "subscribe", "jobIds": [job], "since": {job: since}}))
                    while True:
                        msg = json.loads(ws.recv(timeout=30))
                        if msg["type"] == "pong":
                            served_by.append(msg["replica"])
                        elif msg.get("jobId") == job and "seq" in msg:
                            seqs.append(msg["seq"])
                            if msg["type"] in ("job:completed", "job:failed"):
                                return None
                            if len(served_by) == 1 and len(seqs) == 5:  # mid-job: crash this socket's replica
                                os.kill(replicas[served_by[0]]["pid"], signal.SIGKILL)
            except (OSError, ConnectionClosed, TimeoutError):  # the replica died under the socket
                return served_by[-1]

        t0 = time.monotonic()
        since = 0
        while follow(since) is not None:
            since = seqs[-1] if seqs else 0
            assert time.monotonic() - t0 < 90
        assert len(served_by) >= 2 and served_by[1] != served_by[0], served_by
        assert seqs == list(range(1, seqs[-1] + 1)), seqs  # every event once, in order
        assert seqs[-1] > 5
    finally:
        serve.delete("dash-mn")
        serve.shutdown()


def wait_replicas(app: str, n: int, timeout_s: float = 60) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while len(found := _gateway_replicas(app)) < n:
        assert time.monotonic() < deadline, found
        time.sleep(0.2)
    return found


def test_dash_ray_up_joins_the_cluster_and_leaves_only_its_own_app(gpu_cluster: Any, redis_url: str,
                                                                  tmp_path: Path) -> None:
    """`dash-ray up --address` as a user runs it on a cluster: it needs a Redis every node can
    reach, serves jobs on the cluster's GPU nodes, and on Ctrl-C drains and deletes only its app."""
    import subprocess
    import sys

    import httpx

    from dash_ray.testing import free_port
    from tests.cli.conftest import start_up

    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "DASH_"))}
    env.update(DASH_DATA_DIR=str(tmp_path / "data"), WEBSOCKET_PORT=str(free_port()), DASH_ENABLE_SLEEP_QUEUE="1")
    refused = subprocess.run([sys.executable, "-m", "dash_ray.cli", "up", "--address", gpu_cluster.address],
                             env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "REDIS_URL" in refused.stderr  # the embedded one is loopback-only

    serve.run(_Other.bind(), name="other", route_prefix=None)
    proc, token, out = start_up({**env, "REDIS_URL": redis_url, "DASH_RAY_ADDRESS": gpu_cluster.address})
    try:
        assert any(f"Ray        {gpu_cluster.address}" in line for line in out), out
        base = f"http://127.0.0.1:{env['WEBSOCKET_PORT']}"
        h = {"Authorization": f"Bearer {token}"}
        job = httpx.post(f"{base}/v1/jobs/sleep", json={"durationS": 0.2}, headers={**h, "Prefer": "wait=60"},
                         timeout=70).json()
        assert job["status"] == "completed", job
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0
    apps = serve.status().applications
    assert "dash" not in apps and "other" in apps  # another app on the same cluster keeps running
    serve.delete("other")


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class _Other:
    """Another Serve app on the cluster (one that dash-ray must leave alone)."""

    def __call__(self) -> str:
        return "other"


async def test_a_gpu_node_lost_mid_job_loses_no_job_and_completes_none_twice(
        gpu_cluster: Any, cluster_scheduler: Any, redis_url: str, prefix: str, tmp_path: Path) -> None:
    """Last in this module: it takes a node away (and adds a fresh one for whatever follows)."""
    sched = cluster_scheduler(runner={"duration_s": 4.0, "steps": 8}, max_pending_workers=10, worker_idle_s=600)
    store = JobStore(connect(redis_url), prefix=prefix, queues=("generation",))
    ids = [(await store.add("generation", GEN)).job.id for _ in range(20)]

    async def ten_running() -> bool:
        return (await asyncio.to_thread(sched.stats))["generation"]["running"] == 10

    await wait_for(ten_running, 90, interval_s=0.2)
    lost = gpu_cluster.gpu_nodes.pop(0)
    on_lost = {j for j, w in _running_nodes(sched).items() if w == lost.node_id}
    assert len(on_lost) == 5, on_lost
    gpu_cluster.remove_node(lost, allow_graceful=False)
    views = await all_done(store, ids, 180)
    assert {v.status for v in views} == {"completed"}, [(v.id, v.status, v.error) for v in views]
    for job_id in ids:
        evs = await events(store, job_id)
        assert_well_formed(evs)  # exactly one terminal event: completed once
        assert [e["type"] for e in evs].count("job:completed") == 1
        assert executions(tmp_path, job_id) == (2 if job_id in on_lost else 1), job_id
    gpu_cluster.gpu_nodes.append(gpu_cluster.add_node(**GPU_NODE))


def _running_nodes(sched: Any) -> dict[str, str]:
    """Running job id -> the node of its worker."""
    stats = sched.stats()["generation"]
    node_of = {w["pid"]: w["node"] for w in stats["worker_detail"]}
    return {job: node_of[pid] for job, pid in stats["running_jobs"].items()}
