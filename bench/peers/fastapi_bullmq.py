"""The bare peer of dash-ray's REST submit: one FastAPI endpoint that validates the same
generation payload with pydantic (dash-ray's own model) and calls bullmq's `Queue.add`.

    REDIS_URL=redis://127.0.0.1:6379/0 PEER_PREFIX=peer uvicorn bench.peers.fastapi_bullmq:app

No auth, no limits, no history, no events: what a user would write in an afternoon."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from bullmq import Queue
from fastapi import FastAPI

from dash_ray.models.payloads import GenerationJob

state: dict[str, Any] = {}


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    queue = Queue("generation", {"connection": os.environ["REDIS_URL"], "prefix": os.environ.get("PEER_PREFIX", "peer")})
    await queue.pause()  # nothing runs: the benchmark measures the submit alone
    state["queue"] = queue
    yield
    await queue.close()


app = FastAPI(lifespan=lifespan)


@app.post("/v1/jobs/generation", status_code=201)
async def submit(body: GenerationJob) -> dict[str, Any]:
    job = await state["queue"].add("generation", body.model_dump(mode="json", by_alias=True, exclude_none=True),
                                   {"removeOnComplete": 1000, "attempts": 3})
    return {"id": job.id, "status": "waiting"}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
