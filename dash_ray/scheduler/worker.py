"""WorkerCore: what a GPU worker actor does, as plain code (the actor is a thin shell)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dash_ray.config import Settings
from dash_ray.errors import JobCancelled, WorkerError
from dash_ray.queues import EventBus, Keys, connect
from dash_ray.scheduler.runner import JobContext, Reporter, Runner, RunnerSpec, load_runner

__all__ = ["WorkerCore"]

log = logging.getLogger(__name__)


class WorkerCore:
    """Runs one job at a time with its runner in a worker thread; cancel stops it at its next check."""

    def __init__(self, queue: str, settings: Settings, spec: RunnerSpec, redis_url: str) -> None:
        self.queue = queue
        self.settings = settings
        self.spec = spec
        self.redis = connect(redis_url, name=f"dash:worker:{queue}")
        self.keys = Keys(settings.key_prefix)
        self.bus = EventBus(
            self.redis, self.keys, events_per_job=settings.events_per_job,
            finished_ttl_s=settings.finished_ttl_s,
            keep_finished=settings.keep_completed + settings.keep_failed,
        )
        self.runner: Runner | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"dash-{queue}")
        self._cancels: dict[str, threading.Event] = {}
        self.jobs_done = 0
        self.started_at = time.time()

    async def load(self) -> dict[str, Any]:
        """Build the runner (imports torch etc. once, off the event loop); returns `info()`."""
        if self.runner is None:
            loop = asyncio.get_running_loop()
            self.runner = await loop.run_in_executor(self._thread, load_runner, self.spec, self.settings)
        return self.info()

    def info(self) -> dict[str, Any]:
        """pid, queue, jobs done and the models this worker holds (for model affinity)."""
        models = []
        loaded = getattr(self.runner, "loaded_models", None)
        if callable(loaded):
            models = list(loaded())
        return {"pid": os.getpid(), "queue": self.queue, "jobs_done": self.jobs_done, "models": models,
                "running": list(self._cancels)}

    async def run(self, job: dict[str, Any]) -> dict[str, Any]:
        """Run one job; returns {ok, result} or {ok: False, error, cancelled, retry}."""
        ctx = JobContext(**job)
        await self.load()
        assert self.runner is not None
        cancel = threading.Event()
        self._cancels[ctx.id] = cancel
        if await self.redis.exists(self.keys.cancel(ctx.id)):
            cancel.set()
        loop = asyncio.get_running_loop()
        reporter = Reporter(ctx, self.bus.publish, loop, max_hz=self.settings.progress_max_hz, cancelled=cancel)
        try:
            if cancel.is_set():
                raise JobCancelled(ctx.id)
            result = await loop.run_in_executor(self._thread, self.runner.run, ctx, reporter)
            await reporter.flush()
            self.jobs_done += 1
            return {"ok": True, "result": result}
        except JobCancelled:
            await reporter.flush()
            log.info("job %s cancelled", ctx.id, extra={"job_id": ctx.id})
            return {"ok": False, "cancelled": True, "retry": False, "error": "cancelled"}
        except WorkerError as exc:
            await reporter.flush()
            log.info("job %s rejected: %s", ctx.id, exc, extra={"job_id": ctx.id})
            return {"ok": False, "cancelled": False, "retry": False, "error": str(exc)}
        except Exception as exc:
            await reporter.flush()
            log.warning("job %s failed: %s\n%s", ctx.id, exc, traceback.format_exc(), extra={"job_id": ctx.id})
            return {"ok": False, "cancelled": False, "retry": True, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            self._cancels.pop(ctx.id, None)
            release = getattr(self.runner, "after_job", None)
            if callable(release):
                try:
                    release()
                except Exception:
                    log.exception("runner cleanup failed")

    def cancel(self, job_id: str) -> bool:
        """Ask the running job to stop at its next progress check; False if not running here."""
        ev = self._cancels.get(job_id)
        if ev is None:
            return False
        ev.set()
        return True

    async def close(self) -> None:
        """Release the runner and the Redis connection."""
        close = getattr(self.runner, "close", None)
        if callable(close):
            close()
        await self.redis.aclose()
        self._thread.shutdown(wait=False)
