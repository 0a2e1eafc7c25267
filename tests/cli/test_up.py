"""`dash-ray up` as a user runs it: ready fast, serves a job end to end, Ctrl-C leaves nothing behind."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
from websockets.sync.client import connect

from tests.workers.conftest import png_data_url

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_up_serves_a_job_and_exits_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "DASH_DATA_DIR": str(tmp_path / "data"), "WEBSOCKET_PORT": str(port),
           "DASH_KEY_PREFIX": f"up{uuid.uuid4().hex[:6]}", "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "dash_ray.cli", "up", "--user", "tester"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    token = None
    try:
        while True:
            line = lines.get(timeout=max(1.0, 90 - (time.monotonic() - t0)))
            log.append(line)
            if log[-2:-1] and "Token for user 'tester'" in log[-2]:
                token = line.strip()
            if "Press Ctrl-C" in line:
                break
        ready_s = time.monotonic() - t0
        assert token, "".join(log)
        assert ready_s < 30, f"ready after {ready_s:.1f}s"
        family = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert len(family) > 3  # redis, Ray's processes, actors

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
