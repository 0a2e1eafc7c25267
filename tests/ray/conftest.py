"""One local Ray for the session (loopback, logical GPUs, the queues' resources); a scheduler per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dash_ray.testing import start_scheduler


@pytest.fixture
def make_scheduler(ray_session: Any, redis_url: str, prefix: str) -> Iterator[Callable[..., Any]]:
    """Factory: a Scheduler on the test's key prefix whose queues run the sleep runner (with
    `runner` as its keyword arguments), on the session's Redis or `on_redis`."""
    made: list[Any] = []

    def make(queues: tuple[str, ...] = ("sleep",), runner: dict[str, Any] | None = None, *,
             on_redis: str | None = None, **overrides: Any) -> Any:
        sched = start_scheduler(on_redis or redis_url, prefix, queues, runner=runner, **overrides)
        made.append(sched)
        return sched

    yield make
    for sched in made:
        sched.stop(drain_timeout_s=2)


@pytest.fixture
def make_real_scheduler(ray_session: Any, redis_url: str, prefix: str, tiny_data_dir: Any,
                        tmp_path: Any) -> Iterator[Callable[..., Any]]:
    """Factory: a Scheduler on the test's prefix running the real workloads on tiny models."""
    made: list[Any] = []

    def make(queues: tuple[str, ...], **overrides: Any) -> Any:
        overrides.setdefault("artifacts_url", str(tmp_path / "artifacts"))
        overrides.setdefault("allowed_file_dirs", [str(tmp_path)])
        sched = start_scheduler(redis_url, prefix, queues, real=True, data_dir=tiny_data_dir, torch_threads=1,
                                **overrides)
        made.append(sched)
        return sched

    yield make
    for sched in made:
        sched.stop(drain_timeout_s=2)
