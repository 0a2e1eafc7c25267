"""Gateway load: many sockets, each subscribed to its own job emitting progress; and REST submits.

    python bench/gateway_bench.py [--mode serve|direct] [--sockets 500] [--rate 10] [--seconds 10]

(a) N WebSocket clients on loopback, each subscribed to its own job; a separate publisher
    process emits `rate` progress events/s per job through dash-ray's event bus (as workers
    do). Prints delivered events/s, publish-to-client latency p50/p99, events lost.
(b) REST submit throughput: concurrent POST /v1/jobs/generation.

`serve` runs the gateway as a Ray Serve deployment behind Serve's proxy (as `dash-ray up`
does); `direct` runs the same app under uvicorn in one process. REDIS_URL if set, else an
embedded Redis. Everything stays on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import websockets

from dash_ray.app import build_app, run_gateway, wait_healthy
from dash_ray.config import load_settings
from dash_ray.gateway import TokenAuth
from dash_ray.models import JobProgressEvent
from dash_ray.queues import EmbeddedRedis, JobStore, connect
from dash_ray.testing import free_port

SECRET = "bench-secret-0123456789abcdef-0123456789"
# The load generator (sockets and publisher) runs at the niceness of the server it measures, so on
# a small machine it neither outranks nor yields to it: in `serve` mode that of Ray's worker
# processes (DASH_WORKER_NICENESS, 0 by default), in `direct` mode the default 0.
NICE = 0


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))] if s else float("nan")


def publisher(url: str, prefix: str, ids: list[str], rate: float, seconds: float, start_at: float) -> None:
    """Separate process publishing the way GPU workers do (SyncLifecycle): `rate` progress events/s
    for every job, spread over each period in 10 slices, one round trip per slice."""
    from dash_ray.queues import Keys, SyncLifecycle, connect_sync

    os.nice(NICE)
    bus = SyncLifecycle(connect_sync(url), Keys(prefix))
    while time.time() < start_at:
        time.sleep(0.005)
    ticks = int(seconds * rate)
    slices = 10
    groups = [ids[i::slices] for i in range(slices)]
    t0 = time.monotonic()
    for tick in range(1, ticks + 1):
        for k, group in enumerate(groups):
            bus.publish([
                JobProgressEvent(job_id=job_id, queue="sleep", user_id="bench", status="active",
                                 progress=100 * tick / ticks, message=f"tick {tick}", step=tick, steps=ticks)
                for job_id in group
            ])
            delay = t0 + (tick - 1 + (k + 1) / slices) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)


async def socket_client(ws_url: str, job_id: str, lat: list[float], counts: dict[str, int],
                        ready: asyncio.Event, expect: int) -> None:
    # No per-message timeout (asyncio.wait_for costs a task per message here): the phase's
    # overall deadline cancels clients that are still waiting.
    async with websockets.connect(ws_url, max_queue=None, compression=None) as ws:
        await ws.send(json.dumps({"type": "subscribe", "jobIds": [job_id]}))
        got = 0
        while True:
            raw = await ws.recv()
            now = time.time()
            if '"step"' in raw:  # a progress report: only its ts matters (cheap parse)
                i = raw.index('"ts":') + 5
                lat.append((now - float(raw[i:raw.index(",", i)])) * 1000)
                got += 1
                counts["received"] += 1
                if got >= expect:
                    return
                continue
            msg = json.loads(raw)
            if msg["type"] == "error":
                counts["errors"] = counts.get("errors", 0) + 1
                if counts["errors"] <= 3:
                    print("  server error:", msg, flush=True)
            if msg["type"] == "subscribed":
                counts["subscribed"] += 1
                if counts["subscribed"] == counts["sockets"]:
                    ready.set()


async def sockets_phase(args: argparse.Namespace, url: str, prefix: str, base: str) -> dict[str, Any]:
    import gc

    gc.disable()  # the harness's own GC pauses are not the gateway's latency
    r = connect(url)
    store = JobStore(r, prefix=prefix, queues=("sleep",), user_history_max=100_000)
    ids = [(await store.add("sleep", {"userId": "bench"})).job.id for _ in range(args.sockets)]
    await r.aclose()
    token = TokenAuth(SECRET).mint("bench")
    ws_url = base.replace("http", "ws") + f"/ws?token={token}"
    lat: list[float] = []
    counts = {"subscribed": 0, "received": 0, "sockets": args.sockets}
    ready = asyncio.Event()
    expect = int(args.seconds * args.rate)
    tasks = []
    t_connect = time.monotonic()
    for i, job_id in enumerate(ids):
        tasks.append(asyncio.create_task(socket_client(ws_url, job_id, lat, counts, ready, expect)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)
    while not ready.is_set():
        try:
            await asyncio.wait_for(ready.wait(), 5)
        except asyncio.TimeoutError:
            failed = [t for t in tasks if t.done()]
            print(f"  ... {counts['subscribed']}/{args.sockets} subscribed, {len(failed)} clients ended", flush=True)
            if failed:
                print("  first failure:", repr(failed[0].exception()))
            if time.monotonic() - t_connect > 120:
                raise RuntimeError("sockets did not all subscribe") from None
    connect_s = time.monotonic() - t_connect
    start_at = time.time() + 1.0
    proc = mp.get_context("spawn").Process(target=publisher, args=(url, prefix, ids, args.rate, args.seconds, start_at))
    proc.start()
    t0 = time.monotonic()
    done, pending = await asyncio.wait(tasks, timeout=args.seconds + 30)
    elapsed = time.monotonic() - t0 - 1.0
    for t in pending:
        t.cancel()
    proc.join(30)
    errors = sum(1 for t in done if t.exception() is not None)
    published = args.sockets * expect
    return {"sockets": args.sockets, "connected_s": connect_s, "published": published,
            "received": counts["received"], "lost": published - counts["received"], "client_errors": errors,
            "events_per_s": counts["received"] / max(elapsed, 1e-9), "p50": statistics.median(lat) if lat else float("nan"),
            "p99": pct(lat, 99), "max": max(lat) if lat else float("nan")}


async def rest_phase(base: str, n: int, in_flight: int) -> float:
    token = TokenAuth(SECRET).mint("rest-bench")
    sem = asyncio.Semaphore(in_flight)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:

        async def one(i: int) -> None:
            async with sem:
                r = await client.post("/v1/jobs/generation", json={"prompt": f"bench {i}"})
                assert r.status_code == 201, r.text

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["serve", "direct"], default="serve")
    ap.add_argument("--sockets", type=int, default=500)
    ap.add_argument("--rate", type=float, default=10.0, help="progress events per second per job")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rest-jobs", type=int, default=1000)
    ap.add_argument("--rest-in-flight", type=int, default=32)
    args = ap.parse_args()
    global NICE
    if args.mode == "serve":
        NICE = load_settings().worker_niceness

    url = load_settings().resolved_redis_url()
    server = None
    if url is None:
        server = EmbeddedRedis(tempfile.mkdtemp(prefix="dash-bench-"), server=load_settings().redis_server)
        url = server.start()
    prefix = f"gb{uuid.uuid4().hex[:6]}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env_settings = {"key_prefix": prefix, "token_secret": SECRET, "data_dir": tempfile.mkdtemp(prefix="dash-gb-"),
                    "rate_submit": "1000000/minute", "max_waiting_per_user": 1_000_000,
                    "max_sockets_per_user": 100_000}  # one user holds every socket here
    uv = None
    try:
        if args.mode == "serve":
            from dash_ray.scheduler.cluster import init_ray
            from dash_ray.scheduler.resources import queue_specs

            settings = load_settings(**env_settings, host="127.0.0.1", websocket_port=port)
            init_ray(settings, queue_specs(settings))
            # the gateway alone: its queues are known but no consumer runs (jobs just wait)
            app = build_app(settings, url, specs=queue_specs(settings), scheduler=False)
            run_gateway(settings, app, "bench", timeout_s=120)
        else:
            env = {**os.environ, "REDIS_URL": url, **{f"DASH_{k.upper()}": str(v) for k, v in env_settings.items()}}
            uv = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "dash_ray.gateway.asgi:app",
                                   "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"], env=env)
            wait_healthy(base, timeout_s=120)
        os.nice(NICE)
        ws = asyncio.run(sockets_phase(args, url, prefix, base))
        rest = asyncio.run(rest_phase(base, args.rest_jobs, args.rest_in_flight))
        print(f"\nmode={args.mode} redis={'embedded' if server else url}")
        print(f"(a) {ws['sockets']} sockets ({ws['connected_s']:.1f}s to connect+subscribe), "
              f"{args.rate:g} events/s each for {args.seconds:g}s")
        print(f"    delivered {ws['events_per_s']:8.0f} events/s   latency p50 {ws['p50']:.1f} ms  p99 {ws['p99']:.1f} ms"
              f"  max {ws['max']:.1f} ms   lost {ws['lost']} of {ws['published']}   client errors {ws['client_errors']}")
        print("    targets: all sockets served, p99 <= 50 ms, 0 lost")
        print(f"(b) REST submit  {rest:8.0f} jobs/s  ({args.rest_jobs} POST /v1/jobs/generation, {args.rest_in_flight} in flight)")
    finally:
        if uv is not None:
            uv.terminate()
            uv.wait(15)
        if args.mode == "serve":
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()
        if server:
            server.stop()


if __name__ == "__main__":
    main()
