"""The embedded Redis keeps its jobs across a restart (append-only file in its data dir)."""

from __future__ import annotations

from pathlib import Path

from dash_ray.queues import EmbeddedRedis, JobStore, connect


async def test_restart_keeps_jobs(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path)
    server.start()
    pid = server.pid
    try:
        r = connect(server.url)
        store = JobStore(r, queues=("generation",))
        await store.add("generation", {"userId": "alice", "prompt": "persist me", "jobId": "durable"})
        await r.aclose()
    finally:
        server.stop()
    assert not Path(f"/proc/{pid}").exists()
    server = EmbeddedRedis(tmp_path)
    server.start()
    try:
        r = connect(server.url)
        store = JobStore(r, queues=("generation",))
        view = await store.get("durable")
        assert view.status == "waiting" and view.data["prompt"] == "persist me"
        assert (await store.counts("generation"))["waiting"] == 1
        await r.aclose()
    finally:
        server.stop()
