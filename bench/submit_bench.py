"""REST submit, in one process: the gateway app driven through httpx's ASGI transport (no
network, no Ray, no Serve), so that what it measures is the submit path itself: auth, policy,
the limits, job creation in Redis and the signed answer. Prints jobs/s and CPU per submit.

    python bench/submit_bench.py --jobs 2000 --in-flight 32

Redis: REDIS_URL if set, else an embedded one (DASH_REDIS_SERVER picks which server)."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid

import httpx

from dash_ray.config import load_settings
from dash_ray.gateway import GatewayServices, TokenAuth, create_app
from dash_ray.queues import EmbeddedRedis

SECRET = "bench-secret-0123456789abcdef-0123456789"
BODY = {"prompt": "a red fox", "settings": {"steps": 20, "width": 64, "height": 64}}


async def run(url: str, jobs: int, in_flight: int) -> None:
    settings = load_settings(key_prefix=f"sb{uuid.uuid4().hex[:6]}", token_secret=SECRET,
                             data_dir=tempfile.mkdtemp(prefix="dash-sb-"), rate_submit="1000000/minute",
                             max_waiting_per_user=10 * jobs + 1000)
    app = create_app(GatewayServices.create(settings, url))
    headers = {"Authorization": f"Bearer {TokenAuth(SECRET).mint('bench')}"}
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://bench") as client:
        for _ in range(100):  # warm: scripts loaded, connections open
            assert (await client.post("/v1/jobs/generation", json=BODY, headers=headers)).status_code == 201
        gate = asyncio.Semaphore(in_flight)

        async def one() -> None:
            async with gate:
                r = await client.post("/v1/jobs/generation", json=BODY, headers=headers)
                assert r.status_code == 201, r.text

        t0, c0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one() for _ in range(jobs)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"REST submit in process  {jobs / wall:6.0f} jobs/s   {1000 * cpu / jobs:.2f} ms CPU per submit "
          f"(gateway and client together; {jobs} POST /v1/jobs/generation, {in_flight} in flight)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--in-flight", type=int, default=32)
    args = ap.parse_args()
    settings = load_settings()
    url = settings.resolved_redis_url()
    server = None
    if url is None:
        server = EmbeddedRedis(tempfile.mkdtemp(prefix="dash-bench-"), server=settings.redis_server)
        url = server.start()
    try:
        asyncio.run(run(url, args.jobs, args.in_flight))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
