"""The client's command line and notebooks against one running `dash-ray up`."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cli.conftest import free_port, start_up


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
