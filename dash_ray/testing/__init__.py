"""What the tests and the benchmarks share: a free loopback port, waiting on a condition, a
recording event sink for runners, one factory of schedulers on the sleep queue, an embedded Redis
with a local Ray for benchmarks, and reading a job's events back. `dash_ray.testing.cluster` has
the fake autoscaling cluster.

Not imported by `dash_ray` itself; loads Ray and torch only inside the functions that need them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from dash_ray.models.status import FINAL_EVENT_TYPES, is_final

__all__ = ["SLEEP_RUNNER", "RecordingSink", "all_done", "events", "free_port", "intervals", "sleep_queue_rig",
           "sleep_settings", "start_scheduler", "wait_for"]

SLEEP_RUNNER = "dash_ray.scheduler.sleep:SleepRunner"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(predicate: Any, timeout_s: float = 30.0, interval_s: float = 0.05) -> Any:
    """Poll an async predicate until it returns something truthy; returns it."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {predicate}")
        await asyncio.sleep(interval_s)


class RecordingSink:
    """The worker's event sink (what a `Publisher` sends to), in memory: records every event
    (`events`, with the time each arrived in `times`) and keeps checkpoints. `cancel_when(event)`
    says which events answer "cancelled" (as the real sink does for a cancelled job's)."""

    def __init__(self, cancel_when: Callable[[Any], bool] | None = None) -> None:
        self.events: list[Any] = []
        self.times: list[float] = []
        self.lock = threading.Lock()
        self.cancel_when = cancel_when or (lambda event: False)
        self.checkpoints: dict[str, str] = {}
        self.yield_asked = False  # what the checkpoint script says of the job's yield flag

    @property
    def progress(self) -> list[Any]:
        """The `job:progress` events."""
        with self.lock:
            return [e for e in self.events if e.type == "job:progress"]

    @property
    def extra(self) -> list[Any]:
        """The other events: previews and log lines."""
        with self.lock:
            return [e for e in self.events if e.type != "job:progress"]

    def publish(self, events: list[Any], tokens: list[str] | None = None) -> list[bool]:
        with self.lock:
            for e in events:
                self.events.append(e)
                self.times.append(time.monotonic())
        return [bool(self.cancel_when(e)) for e in events]

    def commit_checkpoint(self, job_id: str, queue: str, token: str, path: str) -> tuple[bool, str, bool]:
        prev = self.checkpoints.get(job_id, "")
        self.checkpoints[job_id] = path
        return True, prev, self.yield_asked

    def checkpoint_of(self, job_id: str) -> str:
        return self.checkpoints.get(job_id, "")


def start_scheduler(redis_url: str, prefix: str, queues: tuple[str, ...] = ("sleep",), *,
                    runner: dict[str, Any] | None = None, real: bool = False, **overrides: Any) -> Any:
    """A started `Scheduler` on `prefix` for `queues`, on the Ray this process is connected to.
    By default every queue runs the sleep runner (`runner`: its keyword arguments); `real=True`
    keeps each queue's own runner (the real workloads). `overrides` are settings."""
    from dash_ray.config import load_settings
    from dash_ray.scheduler import RunnerSpec, queue_specs
    from dash_ray.scheduler.cluster import Scheduler
    from dash_ray.scheduler.resources import with_runner

    settings = load_settings(key_prefix=prefix, **overrides)
    specs = queue_specs(settings, test_queues=not real)
    if not real:
        specs = with_runner(specs, RunnerSpec(SLEEP_RUNNER, runner or {}))
    sched = Scheduler(settings, redis_url, [s for s in specs if s.name in queues])
    sched.start()
    return sched


def sleep_settings(workers: int) -> dict[str, Any]:
    """Settings of a `sleep` queue with `workers` warm workers that stay."""
    return {"enable_sleep_queue": True, "worker_idle_s": 600, "max_pending_workers": workers,
            "sleep_concurrency": workers}


@contextlib.contextmanager
def sleep_queue_rig(workers: int, tag: str = "dash-bench-") -> Iterator[str]:
    """For benchmarks: an embedded Redis and a local Ray (2 CPUs) whose node has `workers` slots of
    the `sleep` queue; yields the Redis URL, then stops both. Start schedulers on it with
    `start_scheduler(url, prefix, **sleep_settings(workers))`."""
    import tempfile
    from pathlib import Path

    import ray

    from dash_ray.config import load_settings
    from dash_ray.queues import EmbeddedRedis
    from dash_ray.scheduler import queue_specs
    from dash_ray.scheduler.cluster import init_ray

    redis = EmbeddedRedis(Path(tempfile.mkdtemp(prefix=tag)) / "redis")
    url = redis.start()
    try:
        settings = load_settings(**sleep_settings(workers))
        init_ray(settings, [s for s in queue_specs(settings, test_queues=True) if s.name == "sleep"], num_cpus=2)
        yield url
    finally:
        ray.shutdown()
        redis.stop()


async def events(store: Any, job_id: str) -> list[dict[str, Any]]:
    """All events of a job from its replay stream."""
    return [json.loads(e) for e in await store.bus.replay(job_id)]


async def all_done(store: Any, ids: list[str], timeout_s: float) -> list[Any]:
    """Wait until every job is final; returns their views."""
    async def check() -> list[Any] | None:
        views = [await store.get(i) for i in ids]
        return views if all(is_final(v.status) for v in views) else None

    return await wait_for(check, timeout_s, interval_s=0.2)


def intervals(evs: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(start, end) of each attempt: an `active` event to the next retry or final event."""
    out = []
    start = None
    for e in evs:
        if e["type"] == "job:progress" and e["status"] == "active" and e.get("message", "").startswith("started"):
            start = e["ts"]
        elif start is not None and (e["type"] in FINAL_EVENT_TYPES or e.get("status") in ("retrying", "waiting")):
            out.append((start, e["ts"]))
            start = None
    return out
