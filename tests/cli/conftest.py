"""`dash-ray up` as a user runs it, and the client's command line and notebooks against it."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_up(env: dict[str, str]) -> tuple[subprocess.Popen[str], str, list[str]]:
    """`dash-ray up` until it prints its token; returns (process, token, output so far)."""
    proc = subprocess.Popen([sys.executable, "-m", "dash_ray.cli", "up", "--user", "tester"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    log: list[str] = []
    token = ""
    t0 = time.monotonic()
    try:
        while True:
            line = lines.get(timeout=max(1.0, 120 - (time.monotonic() - t0)))
            log.append(line)
            if log[-2:-1] and "Token for user 'tester'" in log[-2]:
                token = line.strip()
            if "Press Ctrl-C" in line:
                return proc, token, log
    except BaseException:
        proc.kill()  # never came up: end it (its own process group holds the rest)
        raise



@pytest.fixture(scope="package")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One `dash-ray up` (tiny models, the sleep queue too) for the client's CLI and notebook
    tests; yields its URL, a token, and an environment whose DASH_URL / DASH_TOKEN point at it."""
    port = free_port()
    data = tmp_path_factory.mktemp("up-client")
    env = {**os.environ, "DASH_DATA_DIR": str(data / "data"), "WEBSOCKET_PORT": str(port),
           "DASH_KEY_PREFIX": f"cli{uuid.uuid4().hex[:6]}", "PYTHONUNBUFFERED": "1", "DASH_ENABLE_SLEEP_QUEUE": "1",
           "DASH_TORCH_THREADS": "1"}
    proc, token, log = start_up(env)
    try:
        assert token, "".join(log)
        base = f"http://127.0.0.1:{port}"
        yield {"base": base, "token": token, "data": data,
               "env": {**env, "DASH_URL": base, "DASH_TOKEN": token}}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
