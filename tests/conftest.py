"""Shared fixtures: one real Redis per session (embedded unless REDIS_URL is set), a key prefix per test."""

from __future__ import annotations

import os

# Keep every Ray process of the test session on loopback (read by Ray at import time).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dash_ray.config import load_settings
from dash_ray.models.queues import load_queue_plugins

# The plug-in queue of the tests (`echo`, test-only), added the way a deployment adds one
# (DASH_QUEUE_PLUGINS); before anything builds routes or a Ray node from the queue table.
load_queue_plugins("tests.plugin_queue:QUEUE")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis: REDIS_URL / REDIS_HOST if configured, else the embedded server."""
    settings = load_settings()
    url = settings.resolved_redis_url()
    if url:
        yield url
        return
    from dash_ray.queues import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), server=settings.redis_server)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix, so tests never see each other's keys."""
    return f"t{uuid.uuid4().hex[:12]}"


async def _delete_prefix(r: Any, prefix: str) -> None:
    batch = []
    async for key in r.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            await r.delete(*batch)
            batch = []
    if batch:
        await r.delete(*batch)


@pytest.fixture
async def redis(redis_url: str, prefix: str) -> AsyncIterator[Any]:
    """An asyncio Redis client; the test's keys are deleted afterwards."""
    from dash_ray.queues import connect

    r = connect(redis_url)
    try:
        yield r
    finally:
        with contextlib.suppress(Exception):
            await _delete_prefix(r, prefix)
        await r.aclose()


@pytest.fixture
async def blocking_redis(redis_url: str) -> AsyncIterator[Any]:
    """A separate client for blocking waits."""
    from dash_ray.queues import connect

    r = connect(redis_url, blocking=True)
    try:
        yield r
    finally:
        await r.aclose()


@pytest.fixture
def make_store(redis: Any, prefix: str) -> Callable[..., Any]:
    """Factory of JobStores on the test's prefix (sleep queue enabled)."""
    from dash_ray.queues import JobStore

    def make(**kwargs: Any) -> Any:
        kwargs.setdefault("queues", ("training", "upscaling", "generation", "sleep"))
        return JobStore(redis, prefix=prefix, **kwargs)

    return make


@pytest.fixture
def make_consumer(redis: Any, blocking_redis: Any, redis_url: str, prefix: str) -> Iterator[Callable[..., Any]]:
    """Factory of QueueConsumers on the test's prefix, each with the `worker_lifecycle` a worker
    would publish its events with (see `helpers.take_one`); maintenance tasks stopped afterwards."""
    from dash_ray.queues import Keys, QueueConsumer, SyncLifecycle, connect_sync

    made: list[Any] = []
    sync = connect_sync(redis_url)

    def make(queue: str, store: Any, **kwargs: Any) -> Any:
        c = QueueConsumer(redis, blocking_redis, queue, store.lifecycle, prefix=prefix, **kwargs)
        c.worker_lifecycle = SyncLifecycle(sync, Keys(prefix))
        made.append(c)
        return c

    yield make
    # close() is async; maintenance tasks die with the test's event loop.
    for c in made:
        for t in c.locks.tasks:
            t.cancel()
    sync.close()


@pytest.fixture(scope="session")
def ray_session() -> Iterator[dict[str, Any]]:
    """A local Ray whose one node offers dash_training 1, dash_upscaling 3, dash_generation 5, dash_sleep 5."""
    import ray

    from dash_ray.scheduler import queue_specs
    from dash_ray.scheduler.cluster import init_ray

    settings = load_settings()
    resources = init_ray(settings, queue_specs(settings, test_queues=True), num_cpus=2)
    yield resources
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir whose models/ holds the built-in tiny models, built once per session."""
    from dash_ray.services import TINY_SD, TINY_UPSCALER
    from dash_ray.workers.tiny import ensure_tiny

    root = tmp_path_factory.mktemp("tinydata")
    ensure_tiny(TINY_SD, root / "models")
    ensure_tiny(TINY_UPSCALER, root / "models")
    return root


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium (the system's: DASH_CHROMIUM or `chromium` on PATH) driven by Playwright.
    Skipped where there is none, unless DASH_REQUIRE_BROWSER is set (CI sets it). Per module:
    Playwright's sync API keeps an event loop of its own, closed before asyncio tests run."""
    import shutil

    path = os.environ.get("DASH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        if os.environ.get("DASH_REQUIRE_BROWSER"):
            pytest.fail("no chromium on PATH (apt-get install chromium)")
        pytest.skip("no chromium on PATH: apt-get install chromium to run the browser tests (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # Pages a test serves itself (route.fulfill) count as public in Chromium's Local Network
        # Access checks, which would block their sockets to the gateway on 127.0.0.1.
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu",
                                                           "--disable-features=LocalNetworkAccessChecks"])
        yield b
        b.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by folder: unit, redis, ray, e2e, workers, cluster. The cluster tests run first:
    each of their modules connects this process to a multi-node Ray of its own and leaves before
    the next, while the rest of the session shares one local Ray (`ray_session`) once started."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        for marker in ("unit", "redis", "ray", "e2e", "workers", "cluster"):
            if marker in parts:
                item.add_marker(getattr(pytest.mark, marker))
        if "workers" in parts:  # runners on tiny models: no Redis at all
            item.add_marker(pytest.mark.once)
    items.sort(key=lambda item: "cluster" not in Path(str(item.fspath)).parts)  # stable: order kept within
