"""Test helpers: waiting on job states and checking event streams."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from dash_ray.models.status import FINAL_EVENT_TYPES as TERMINAL
from dash_ray.testing import (
    all_done,
    events,
    intervals,
    sleep_queue_rig,
    sleep_settings,
    start_scheduler,
    wait_for,
)

__all__ = ["TERMINAL", "WebhookReceiver", "all_done", "assert_well_formed", "complete", "events", "executions",
           "intervals", "max_overlap", "sleep_queue_rig", "sleep_settings", "start_scheduler", "take_one", "wait_for",
           "wait_status"]


async def wait_status(store: Any, job_id: str, statuses: tuple[str, ...], timeout_s: float = 30.0) -> Any:
    """Wait until the job's view has one of `statuses`; returns the view."""
    async def check() -> Any:
        view = await store.get(job_id)
        return view if view.status in statuses else None

    return await wait_for(check, timeout_s)


def assert_well_formed(evs: list[dict[str, Any]]) -> None:
    """Strictly increasing seq, exactly one terminal event, and it is the last."""
    seqs = [e["seq"] for e in evs]
    assert seqs == sorted(set(seqs)) and seqs[0] == 1, seqs
    terminal = [i for i, e in enumerate(evs) if e["type"] in TERMINAL]
    assert len(terminal) == 1 and terminal[0] == len(evs) - 1, [e["type"] for e in evs]


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one instant (an end at t closes before a start at t)."""
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda p: (p[0], p[1]))
    best = cur = 0
    for _t, d in points:
        cur += d
        best = max(best, cur)
    return best


async def take_one(consumer: Any, block_s: float = 0.0) -> Any:
    """Take one job the way the scheduler does (the take publishes its `active` event), or, had
    it not, start it the way a worker does (its `active` event through a worker's SyncLifecycle,
    which `make_consumer` gives each consumer as `worker_lifecycle`); None if nothing came
    within block_s."""
    from dash_ray.queues import started_event

    jobs = await consumer.take(block_s)
    if not jobs:
        return None
    job = jobs[0]
    if not job.announced:  # the take published its start (it always does for the first job it hands out)
        await asyncio.to_thread(consumer.worker_lifecycle.publish,
                                [started_event(job.id, job.queue, job.user_id, job.attempt, job.attempts)])
    return job


async def complete(consumer: Any, job: Any, result: Any) -> None:
    """Complete one job as the scheduler does; raises LockLost if it was not ours any more."""
    _next, lost = await consumer.complete([(job, result)])
    if lost:
        raise lost[0]


def executions(tmp_path: Any, job_id: str) -> int:
    """How many times the sleep runner started a job (its record in `tmp_path/runs/<job id>`)."""
    from pathlib import Path

    path = Path(tmp_path) / "runs" / job_id
    return len(path.read_text().splitlines()) if path.exists() else 0


class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 that records the webhooks POSTed to it and answers each
    with `answer()` (a status code; 200 by default). Use as a context manager."""

    def __init__(self, answer: Any = None) -> None:
        import http.server
        import threading

        self.answer = answer or (lambda: 200)
        self.got: list[tuple[dict[str, str], str, int]] = []  # (headers, body, status answered)
        self._lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0)).decode()
                status = int(outer.answer())
                with outer._lock:
                    outer.got.append(({k.lower(): v for k, v in self.headers.items()}, body, status))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def received(self) -> list[tuple[dict[str, str], str, int]]:
        with self._lock:
            return list(self.got)

    def wait(self, predicate: Any, timeout_s: float = 30.0) -> list[tuple[dict[str, str], str, int]]:
        """Block until `predicate(received)` holds; returns what was received."""
        deadline = time.monotonic() + timeout_s
        while not predicate(self.received()):
            if time.monotonic() > deadline:
                raise AssertionError(f"webhooks received: {[(h.get('webhook-id'), s) for h, _, s in self.received()]}")
            time.sleep(0.05)
        return self.received()


