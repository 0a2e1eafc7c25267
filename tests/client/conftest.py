"""The client's command line and notebooks against one running `dash-ray up`."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dash_ray.testing import free_port
from tests.cli.conftest import start_up

UP_LOG: dict[str, list[str]] = {}  # "log": the running `dash-ray up`'s output, shown under a failing test


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and UP_LOG.get("log") and "up" in getattr(item, "fixturenames", ()):
        report.sections.append(("dash-ray up's output (last 150 lines)", "".join(UP_LOG["log"][-150:])))


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
        UP_LOG["log"] = log
        yield {"base": base, "token": token, "data": data,
               "env": {**env, "DASH_URL": base, "DASH_TOKEN": token}}
    finally:
        UP_LOG.pop("log", None)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
