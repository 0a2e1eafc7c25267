"""Dashboard responsiveness: a headless Chromium page following N live jobs while their events
stream in; prints the time from an event arriving at the page to the first frame that can show
its row updated (p50 / p95 / max), and how many events arrived.

    python bench/dashboard_bench.py [--jobs 200] [--seconds 20] [--rate 400]

It runs the gateway under uvicorn in a process of its own on a loopback port (embedded Redis
unless REDIS_URL is set), creates N jobs, has the page track them all, then plays a worker: `--rate` progress events
a second, spread over the jobs, published through the lifecycle a GPU worker uses (the same
scripts, stream and channel). Needs chromium (DASH_CHROMIUM or on PATH) and playwright.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from dash_ray.config import load_settings
from dash_ray.gateway import TokenAuth
from dash_ray.models.events import JobProgressEvent
from dash_ray.queues import (
    EmbeddedRedis,
    JobStore,
    Keys,
    SyncLifecycle,
    connect,
    connect_sync,
    started_event,
)
from dash_ray.testing import free_port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rate", type=float, default=400.0, help="progress events a second, over all jobs")
    args = ap.parse_args()

    chromium = os.environ.get("DASH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("no chromium: apt-get install chromium")
    root = Path(tempfile.mkdtemp(prefix="dash-dashbench-"))
    server = None
    url = load_settings().resolved_redis_url()
    if url is None:
        server = EmbeddedRedis(root / "redis")
        url = server.start()
    prefix = f"db{uuid.uuid4().hex[:6]}"
    secret = uuid.uuid4().hex * 2
    env = {**os.environ, "REDIS_URL": url, "DASH_KEY_PREFIX": prefix, "DASH_TOKEN_SECRET": secret,
           "DASH_DATA_DIR": str(root / "data"), "DASH_ENABLE_SLEEP_QUEUE": "1", "DASH_RATE_SUBMIT": "100000/minute",
           "DASH_MAX_WAITING_PER_USER": "100000"}
    port = free_port()
    # the gateway in a process of its own, as a replica runs (not sharing this one's GIL)
    uv = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "dash_ray.gateway.asgi:app", "--host",
                           "127.0.0.1", "--port", str(port), "--log-level", "warning", "--ws", "websockets-sansio"],
                          env=env)
    base = f"http://127.0.0.1:{port}"
    for _ in range(400):
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    token = TokenAuth(secret).mint("bench")

    async def create() -> list[str]:
        r = connect(url)
        store = JobStore(r, prefix=prefix, queues=("sleep",))
        ids = [(await store.add("sleep", {"userId": "bench"})).job.id for _ in range(args.jobs)]
        await r.aclose()
        return ids

    ids = asyncio.run(create())
    lifecycle = SyncLifecycle(connect_sync(url), Keys(prefix))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{base}/#token={token}")
        page.wait_for_selector("#conn[data-state=open]", timeout=30_000)
        for start in range(0, len(ids), 200):
            chunk = ids[start:start + 200]
            page.evaluate("ids => ids.forEach((id) => window.dash.track({id, queue: 'sleep', status: 'waiting', "
                          "progress: 0}))", chunk)
        page.wait_for_function(f"window.dash.rows.size >= {args.jobs}", timeout=30_000)
        time.sleep(1.0)
        page.evaluate("window.dash.updateLatencies.length = 0")
        lifecycle.publish([started_event(i, "sleep", "bench", 1, 1) for i in ids], [""] * len(ids))
        batch = max(1, int(args.rate / 50))  # 50 round trips a second
        sent, t0, step, rounds = len(ids), time.monotonic(), 0, 0
        while time.monotonic() - t0 < args.seconds:
            events = []
            for _ in range(batch):
                job = ids[step % len(ids)]
                step += 1
                pct = min(99.0, (step // len(ids) + 1) * 1.0)
                events.append(JobProgressEvent(job_id=job, queue="sleep", user_id="bench", status="active",
                                               progress=pct, message=f"step {step}", step=step, steps=10**6))
            lifecycle.publish(events, [""] * len(events))
            sent += len(events)
            rounds += 1
            time.sleep(max(0.0, t0 + rounds * batch / args.rate - time.monotonic()))
        time.sleep(2.0)
        lat = page.evaluate("window.dash.updateLatencies")
        received = page.evaluate("Object.values(window.dash.seqs).reduce((n, s) => n + s.length, 0)")
        browser.close()
    uv.terminate()
    uv.wait(15)
    if server:
        server.stop()
    lat.sort()
    p95 = lat[int(0.95 * (len(lat) - 1))] if lat else float("nan")
    print(f"dashboard, {args.jobs} live jobs, {args.rate:g} events/s for {args.seconds:g}s: "
          f"{len(lat)} row updates measured, {received} events received (of {sent} published)")
    print(f"event arrival -> frame with the row updated: p50 {statistics.median(lat):.1f} ms, "
          f"p95 {p95:.1f} ms, max {lat[-1]:.1f} ms")


if __name__ == "__main__":
    main()
