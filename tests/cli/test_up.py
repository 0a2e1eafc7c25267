"""`dash-ray up` as a user runs it: ready fast, serves a job end to end, Ctrl-C leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from websockets.sync.client import connect

from dash_ray.client import verify_webhook
from dash_ray.testing import free_port
from tests.cli.conftest import start_up
from tests.helpers import WebhookReceiver
from tests.workers.conftest import png_data_url

pytestmark = pytest.mark.e2e


def test_up_serves_a_job_and_exits_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "DASH_DATA_DIR": str(tmp_path / "data"), "WEBSOCKET_PORT": str(port),
           "DASH_KEY_PREFIX": f"up{uuid.uuid4().hex[:6]}", "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    proc, token, log = start_up(env)
    try:
        ready_s = time.monotonic() - t0
        assert token, "".join(log)
        assert ready_s < 30, f"ready after {ready_s:.1f}s"
        family = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert len(family) > 3  # redis, Ray's processes, actors
        # Private infrastructure: a 0700 data dir; a Redis that wants its password (which the
        # console never shows); Ray's control plane with token authentication.
        data = tmp_path / "data"
        assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
        if not (env.get("REDIS_URL") or env.get("REDIS_HOST")):  # the embedded Redis (CI's second run has its own)
            password = (data / "redis" / "redis.password").read_text().strip()
            assert password and password not in "".join(log)
            _pid, redis_port = (int(x) for x in (data / "redis" / "redis.owner").read_text().split())
            with socket.create_connection(("127.0.0.1", redis_port), timeout=5) as s:
                s.sendall(b"PING\r\n")
                assert s.recv(128).startswith(b"-NOAUTH")
        gcs = [p for p in family if "gcs_server" in " ".join(psutil.Process(p).cmdline()[:1])]
        assert gcs and psutil.Process(gcs[0]).environ().get("RAY_AUTH_MODE") == "token"

        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/docs", timeout=10).status_code == 200
        # a real workload: Lanczos upscaling of an inline image (no model to build)
        r = httpx.post(f"{base}/v1/jobs/upscaling", json={"imageUrl": png_data_url(), "scale": 2},
                       headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        with connect(f"ws://127.0.0.1:{port}/ws?token={token}") as ws:
            ws.send(json.dumps({"type": "subscribe", "jobIds": [job_id]}))
            deadline = time.monotonic() + 60
            while True:
                msg = json.loads(ws.recv(timeout=deadline - time.monotonic()))
                assert msg["type"] != "job:failed", msg
                if msg["type"] == "job:completed":
                    assert msg["result"]["width"] == 64
                    break
        family += [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    except BaseException:
        proc.kill()
        raise
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    assert proc.wait(90) == 0
    deadline = time.monotonic() + 15
    left = [p for p in set(family) if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = [p for p in left if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not left, [psutil.Process(p).cmdline()[:2] for p in left]


def _redis_servers_in(folder: Path) -> list[int]:
    """redis-server processes working in `folder` (Redis runs in its --dir)."""
    out = []
    for p in psutil.process_iter(["name", "cwd"]):
        if "redis" in (p.info["name"] or "") and p.info["cwd"] == str(folder):
            out.append(p.pid)
    return out


@pytest.mark.once  # it runs its own embedded Redis whatever REDIS_URL says
def test_up_killed_and_restarted_on_its_data_dir_finishes_every_job_once(tmp_path: Path) -> None:
    import asyncio

    from dash_ray.queues import JobStore, connect

    port = free_port()
    data = tmp_path / "data"
    prefix = f"up{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "DASH_DATA_DIR": str(data), "WEBSOCKET_PORT": str(port), "DASH_KEY_PREFIX": prefix,
           "PYTHONUNBUFFERED": "1", "DASH_ENABLE_SLEEP_QUEUE": "1", "DASH_SLEEP_CONCURRENCY": "2",
           "DASH_REDIS_FSYNC": "always", "DASH_LOCK_DURATION_S": "5", "DASH_STALLED_INTERVAL_S": "2",
           "DASH_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8", "DASH_WEBHOOK_RETRY_S": "0.5",
           "DASH_WEBHOOK_RETRY_MAX_S": "2"}
    env.pop("REDIS_URL", None)
    env.pop("REDIS_HOST", None)
    base = f"http://127.0.0.1:{port}"
    restarted = threading.Event()  # the receiver fails every delivery until the restart
    receiver = WebhookReceiver(lambda: 200 if restarted.is_set() else 500).__enter__()
    first, token, _log = start_up(env)
    h = {"Authorization": f"Bearer {token}"}
    second = None
    try:
        r = httpx.post(f"{base}/v1/jobs/sleep", json={"durationS": 0.1, "options": {"webhook": {"url": receiver.url}}},
                       headers=h, timeout=10)
        assert r.status_code == 201, r.text
        hooked = r.json()["id"]
        receiver.wait(lambda got: len(got) >= 2)  # answered 500, and retried
        ids = {"running": [], "waiting": [], "delayed": []}
        for kind, n, body in (("running", 2, {"durationS": 6, "steps": 6}), ("waiting", 4, {"durationS": 0.2}),
                              ("delayed", 2, {"durationS": 0.1, "options": {"delayS": 20}})):
            for _ in range(n):
                r = httpx.post(f"{base}/v1/jobs/sleep", json=body, headers=h, timeout=10)
                assert r.status_code == 201, r.text
                ids[kind].append(r.json()["id"])
        deadline = time.monotonic() + 60
        while not all(httpx.get(f"{base}/v1/jobs/{i}", headers=h, timeout=10).json()["status"] == "active"
                      for i in ids["running"]):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        first.kill()  # SIGKILL of `dash-ray up` alone: its Redis and Ray are left running
        first.wait(10)
        assert len(_redis_servers_in(data / "redis")) == 1

        second, token, log = start_up(env)
        restarted.set()
        h = {"Authorization": f"Bearer {token}"}
        assert len(_redis_servers_in(data / "redis")) == 1, "".join(log)
        got = receiver.wait(lambda got: any(status == 200 for _, _, status in got), timeout_s=60)
        secret = httpx.get(f"{base}/v1/webhooks/secret", headers=h, timeout=10).json()["secret"]
        events = [verify_webhook(secret, headers, body) for headers, body, _ in got]  # the secret outlived the restart
        assert {(e["type"], e["jobId"]) for e in events} == {("job:completed", hooked)}
        assert len({headers["webhook-id"] for headers, _, _ in got}) == 1
        every = [i for group in ids.values() for i in group]
        deadline = time.monotonic() + 90
        views: dict[str, Any] = {}
        while len(views) < len(every):
            assert time.monotonic() < deadline, views
            for i in every:
                v = httpx.get(f"{base}/v1/jobs/{i}", headers=h, timeout=10).json()
                if v["status"] in ("completed", "failed", "cancelled"):
                    views[i] = v
            time.sleep(0.5)
        assert {v["status"] for v in views.values()} == {"completed"}, views
        for i in ids["delayed"]:
            assert views[i]["startedAt"] >= views[i]["createdAt"] + 19.9, views[i]

        _owner_pid, redis_port = (int(x) for x in (data / "redis" / "redis.owner").read_text().split())

        async def completions() -> dict[str, int]:
            password = (data / "redis" / "redis.password").read_text().strip()
            r = connect(f"redis://:{password}@127.0.0.1:{redis_port}/0")
            store = JobStore(r, prefix=prefix, queues=("sleep",))
            out = {}
            for i in every:
                frames = [json.loads(f) for f in await store.bus.replay(i)]
                out[i] = sum(f["type"] == "job:completed" for f in frames)
            await r.aclose()
            return out

        assert set(asyncio.run(completions()).values()) == {1}
    finally:
        receiver.__exit__(None, None, None)
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
    assert _redis_servers_in(data / "redis") == []
