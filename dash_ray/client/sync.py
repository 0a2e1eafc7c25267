"""Client and JobHandle: the AsyncClient for scripts and notebooks, without `await`.

The async client runs on an event loop of its own, in a background thread, so a Client works
the same in a plain script and inside Jupyter (whose own loop is already running). Each
method is the async one's twin, with the same arguments.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from dash_ray.client.aio import AsyncClient, AsyncJobHandle, Event
from dash_ray.models.status import Status
from dash_ray.models.views import JobView, QueueView, ScheduleView, UsageView

__all__ = ["Client", "JobHandle"]

T = TypeVar("T")


class _Loop:
    """An event loop on a daemon thread; `run` waits for a coroutine's result there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="dash-client", daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[T]) -> T:
        async def wrap() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result()

    def iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        """An async iterator as a plain one (closed on the loop when left early)."""
        try:
            while True:
                try:
                    yield self.run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None and not self.loop.is_closed():
                self.run(aclose())

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class Client:
    """A dash-ray gateway from plain Python (scripts, notebooks).

    >>> client = Client("http://127.0.0.1:8000", token)   # or DASH_URL / DASH_TOKEN
    >>> job = client.submit_generation("a red fox", settings={"steps": 4, "width": 64, "height": 64})
    >>> job.wait(progress=True); job.images()[0]
    """

    def __init__(self, url: str | None = None, token: str | None = None, **kwargs: Any) -> None:
        self._loop = _Loop()
        self.aio: AsyncClient = self._loop.run(_make(url, token, kwargs))

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        return self.aio.url

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections and the client's thread."""
        if not self._loop.loop.is_closed():
            self._loop.run(self.aio.aclose())
            self._loop.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def _handle(self, h: AsyncJobHandle) -> JobHandle:
        return JobHandle(self, h)

    # submit
    def submit(self, queue: str, payload: dict[str, Any], options: dict[str, Any] | None = None,
               **kwargs: Any) -> JobHandle:
        """See AsyncClient.submit."""
        return self._handle(self._loop.run(self.aio.submit(queue, payload, options, **kwargs)))

    def submit_generation(self, prompt: str, **kwargs: Any) -> JobHandle:
        """See AsyncClient.submit_generation."""
        return self._handle(self._loop.run(self.aio.submit_generation(prompt, **kwargs)))

    def submit_upscaling(self, image: Any, scale: int = 2, model: str | None = None, **kwargs: Any) -> JobHandle:
        """See AsyncClient.submit_upscaling."""
        return self._handle(self._loop.run(self.aio.submit_upscaling(image, scale, model, **kwargs)))

    def submit_training(self, lora_id: str, prompt: str, images: Iterable[Any], **kwargs: Any) -> JobHandle:
        """See AsyncClient.submit_training."""
        return self._handle(self._loop.run(self.aio.submit_training(lora_id, prompt, list(images), **kwargs)))

    # jobs
    def job(self, job_id: str, queue: str = "") -> JobHandle:
        """A handle on an existing job."""
        return self._handle(self.aio.job(job_id, queue))

    def get(self, job_id: str) -> JobView:
        """A job's current view."""
        return self._loop.run(self.aio.get(job_id))

    def cancel(self, job_id: str) -> JobView:
        """Cancel a job."""
        return self._loop.run(self.aio.cancel(job_id))

    def logs(self, job_id: str, limit: int = 1000) -> list[str]:
        """A job's log lines, oldest first."""
        return self._loop.run(self.aio.logs(job_id, limit))

    def webhook_secret(self) -> str:
        """Your webhook signing secret (`whsec_...`), for `verify_webhook` on your receiver."""
        return self._loop.run(self.aio.webhook_secret())

    def retry(self, job_id: str) -> JobView:
        """Run a failed or cancelled job again."""
        return self._loop.run(self.aio.retry(job_id))

    def flow(self, tree: dict[str, Any]) -> JobHandle:
        """A job and the jobs it waits for, made in one step; see AsyncClient.flow."""
        return self._flow(self._loop.run(self.aio.flow(tree)))

    def chain(self, *steps: dict[str, Any]) -> JobHandle:
        """Jobs run one after the other (generate, then upscale...); see AsyncClient.chain."""
        return self._flow(self._loop.run(self.aio.chain(*steps)))

    def _flow(self, h: AsyncJobHandle) -> JobHandle:
        handle = self._handle(h)
        handle.children = [self._flow(c) for c in h.children]
        return handle

    def schedule(self, name: str, queue: str, payload: dict[str, Any], **kwargs: Any) -> ScheduleView:
        """A recurring job: `every=` seconds or `cron=`; see AsyncClient.schedule."""
        return self._loop.run(self.aio.schedule(name, queue, payload, **kwargs))

    def schedules(self, user_id: str | None = None) -> list[ScheduleView]:
        """Your schedules, soonest next run first."""
        return self._loop.run(self.aio.schedules(user_id))

    def unschedule(self, name: str, user_id: str | None = None) -> ScheduleView:
        """Stop one of your schedules."""
        return self._loop.run(self.aio.unschedule(name, user_id))

    def move(self, job_id: str, **where: Any) -> JobView:
        """Reorder a waiting job: `to="front"`, `before=`, `priority=` (see AsyncClient.move)."""
        return self._loop.run(self.aio.move(job_id, **where))

    def jobs(self, queue: str | None = None, status: str | None = None, limit: int | None = None,
             **kwargs: Any) -> Iterator[JobView]:
        """Your jobs, newest first, a page at a time as you iterate."""
        return self._loop.iterate(self.aio.jobs(queue, status, limit, **kwargs))

    def usage(self) -> UsageView:
        """What you hold, each against its limit (bytes kept, unfinished jobs, uploads, sockets, streams)."""
        return self._loop.run(self.aio.usage())

    def queues(self) -> list[QueueView]:
        """Each queue's counts, concurrency, GPU share and state."""
        return self._loop.run(self.aio.queues())

    def pause(self, queue: str) -> QueueView:
        """Pause a queue (admin)."""
        return self._loop.run(self.aio.pause(queue))

    def resume(self, queue: str) -> QueueView:
        """Resume a queue (admin)."""
        return self._loop.run(self.aio.resume(queue))

    def upload(self, image: Any) -> str:
        """Upload an image (a path, bytes or a PIL image); its `upload://` reference."""
        return self._loop.run(self.aio.upload(image))

    def fetch(self, path: str) -> bytes:
        """The bytes of an artifact."""
        return self._loop.run(self.aio.fetch(path))

    # events
    def events(self, job_ids: Iterable[str], since: dict[str, int] | int | None = None, **kwargs: Any) -> Iterator[Event]:
        """See AsyncClient.events."""
        return self._loop.iterate(self.aio.events(list(job_ids), since, **kwargs))

    def feed(self, scope: str = "mine", **kwargs: Any) -> Iterator[Event]:
        """Every event of your jobs as it happens (new ones from any client too); never ends by
        itself. See AsyncClient.feed."""
        return self._loop.iterate(self.aio.feed(scope, **kwargs))

    def watch(self, handles: Iterable[JobHandle | str]) -> Iterator[Event]:
        """The live events of several jobs over one socket, until all are final."""
        return self._loop.iterate(self.aio.watch([h if isinstance(h, str) else h.aio for h in handles]))

    def wait_all(self, handles: Iterable[JobHandle], **kwargs: Any) -> list[JobView]:
        """Wait until every job is final (one socket); their final views. `progress=True`: a bar each."""
        return self._loop.run(self.aio.wait_all([h.aio for h in handles], **kwargs))


class JobHandle:
    """One job, from plain Python; in Jupyter it shows itself (status, progress, images, loss)."""

    def __init__(self, client: Client, aio: AsyncJobHandle) -> None:
        self.client = client
        self.aio = aio
        self.children: list[JobHandle] = []  # a flow's: the jobs this one waits for

    def image(self, n: int = 0) -> str:
        """A reference to this job's `n`th image, for another job's payload (`job://...`)."""
        return self.aio.image(n)

    def then_upscale(self, scale: int = 2, model: str | None = None, n: int = 0,
                     options: dict[str, Any] | None = None) -> JobHandle:
        """Upscale this job's `n`th image: a new job, made now, that waits for this one (see
        AsyncJobHandle.then_upscale)."""
        return self.client._handle(self._run(self.aio.then_upscale(scale, model, n, options)))

    @property
    def id(self) -> str:
        """The job's id."""
        return self.aio.id

    @property
    def queue(self) -> str:
        """The job's queue."""
        return self.aio.queue

    @property
    def view(self) -> JobView:
        """The job's last known view."""
        return self.aio.view

    @property
    def lora_id(self) -> str | None:
        """A training job's LoRA id, for `submit_generation(..., lora=...)`."""
        return self.aio.lora_id

    def __repr__(self) -> str:
        return repr(self.aio)

    def _run(self, coro: Awaitable[T]) -> T:
        return self.client._loop.run(coro)

    def status(self) -> JobView:
        """The job's current view."""
        return self._run(self.aio.status())

    def events(self, since: int | None = 0) -> Iterator[Event]:
        """The job's events until it ends (from its start by default); reconnects by itself."""
        return self.client._loop.iterate(self.aio.events(since))

    def wait(self, timeout: float | None = None, *, progress: bool = False, raise_on_failure: bool = True) -> JobView:
        """Wait until the job ends; see AsyncJobHandle.wait."""
        return self._run(self.aio.wait(timeout, progress=progress, raise_on_failure=raise_on_failure))

    def result(self, timeout: float | None = None) -> Any:
        """Wait and return the job's result."""
        return self._run(self.aio.result(timeout))

    def cancel(self) -> JobView:
        """Cancel the job."""
        return self._run(self.aio.cancel())

    def retry(self) -> JobView:
        """Run the failed or cancelled job again."""
        return self._run(self.aio.retry())

    def move(self, **where: Any) -> JobView:
        """Reorder it while it waits: `to="front"`, `before=`, `priority=` (see AsyncClient.move)."""
        return self._run(self.aio.move(**where))

    def images(self) -> list[Any]:
        """The job's images as PIL images (waits for it)."""
        return self._run(self.aio.images())

    def image_bytes(self) -> list[bytes]:
        """The job's images as PNG bytes (waits for it)."""
        return self._run(self.aio.image_bytes())

    def download(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Save the job's result files in `directory`."""
        return self._run(self.aio.download(directory))

    def logs(self) -> list[str]:
        """The job's log lines, oldest first."""
        return self._run(self.aio.logs())

    def previews(self) -> list[Any]:
        """The `job:preview` events seen so far (latent previews, training samples)."""
        return self.aio.previews()

    def losses(self) -> list[tuple[int, float]]:
        """A training job's (epoch, loss) per finished epoch."""
        return self._run(self.aio.losses())

    def plot_loss(self) -> Any:
        """A training job's loss curve as an image (PIL), or None without losses or matplotlib."""
        from dash_ray.client.display import loss_png, to_pil

        png = loss_png(self.losses(), f"LoRA {self.id}")
        return to_pil(png) if png else None

    def _repr_html_(self) -> str:
        from dash_ray.client.display import job_html, loss_png

        try:
            view = self.status()
        except Exception:
            view = self.view
        images: list[bytes] = []
        loss = None
        if view.status == Status.COMPLETED and view.queue in ("generation", "upscaling"):
            try:
                images = self.image_bytes()
            except Exception:
                images = []
        if view.queue == "training" and (view.done or view.status == Status.ACTIVE):
            try:
                loss = loss_png(self.losses() if view.done else [], f"LoRA {self.id}")
            except Exception:
                loss = None
        return job_html(view, images, loss)


async def _make(url: str | None, token: str | None, kwargs: dict[str, Any]) -> AsyncClient:
    return AsyncClient(url, token, **kwargs)  # made on the client's loop, where it is used
