"""The whole stack through Ray Serve's proxy on loopback: 2 gateway replicas, the scheduler, sleep queue."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dash_ray.config import load_settings
from dash_ray.testing import free_port
from tests.redis.conftest import SECRET


@pytest.fixture(scope="module", params=["direct", "serve"])
def stack(request: pytest.FixtureRequest, ray_session: Any, redis_url: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Serve app `dash-e2e` on a free loopback port, served by the replicas themselves (`direct`)
    or through Serve's proxy (`serve`); yields its base URL and a token minter."""
    import uuid

    from ray import serve

    from dash_ray.app import build_app, run_gateway
    from dash_ray.gateway import TokenAuth
    from dash_ray.scheduler import RunnerSpec, queue_specs
    from dash_ray.scheduler.resources import with_runner

    prefix = f"e2e{uuid.uuid4().hex[:8]}"
    port = free_port()
    settings = load_settings(
        key_prefix=prefix, token_secret=SECRET, data_dir=tmp_path_factory.mktemp("e2e"),
        gateway_replicas=2, worker_idle_s=5, enable_sleep_queue=True, ingress=request.param,
        websocket_port=port,
    )
    specs = [s for s in with_runner(queue_specs(settings, test_queues=True),
                                     RunnerSpec("dash_ray.scheduler.sleep:SleepRunner")) if s.name == "sleep"]
    base = run_gateway(settings, build_app(settings, redis_url, specs), "dash-e2e")
    auth = TokenAuth(SECRET)
    yield {"base": base, "ws": f"ws://127.0.0.1:{port}/ws", "token": auth.mint, "prefix": prefix,
           "settings": settings}
    serve.delete("dash-e2e")
    serve.shutdown()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path
