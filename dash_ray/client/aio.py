"""AsyncClient and AsyncJobHandle: the REST API and the WebSocket event stream, typed with the
gateway's own models. Light: httpx, websockets and pydantic; no server code, torch or Ray.

Every submit carries a job id (the caller's, or one made here), so a submit retried after a
lost answer, a 429 or a 503 (`retries=`) never creates a job twice. Event streams reconnect by
themselves and resubscribe with `since` (the last `seq` seen per job): across a gateway restart
no event is lost or repeated.
"""

from __future__ import annotations

import asyncio
import base64
import json
import mimetypes
import os
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import httpx

from dash_ray.client.errors import (
    ApiError,
    JobFailed,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
    error_from,
)
from dash_ray.loops import Backoff, pause
from dash_ray.models.events import (
    EVENT_TYPES,
    MAX_SUBSCRIBE_IDS,
    JobCompletedEvent,
    JobEvent,
    JobFailedEvent,
    JobPreviewEvent,
    JobProgressEvent,
    Seen,
    parse_event,
)
from dash_ray.models.images import is_image_url, sniff_image
from dash_ray.models.queues import QUEUE_TABLE
from dash_ray.models.status import FINAL_EVENT_TYPES, is_failure
from dash_ray.models.views import FlowView, JobList, JobView, QueueView, ScheduleView, UsageView

__all__ = ["AsyncClient", "AsyncJobHandle", "Event", "image_ref", "job_image", "previous_image"]

Event = JobEvent  # any job event (`models.events.JobEvent`), by its older name here
DEFAULT_URL = "http://127.0.0.1:8000"
_RECONNECT_MAX_S = 5.0


def _backoff(cap_s: float) -> Backoff:
    """The pauses before a retried request (cap 10 s) and a socket's reconnects (cap 5 s)."""
    return Backoff(first_s=0.25, max_s=cap_s)


def image_ref(image: Any) -> str:
    """An image as a payload's `imageUrl`: a URL (`http(s)://`, `data:`, `upload://`, `file://`)
    as is; a path, bytes or a PIL image as a `data:` URL."""
    if is_image_url(image):
        return str(image)
    data, mime = _image_bytes(image)
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"




def _image_bytes(image: Any) -> tuple[bytes, str]:
    """The bytes and content type of a path, bytes or a PIL image."""
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        data = path.read_bytes()
        return data, sniff_image(data) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
        return data, sniff_image(data) or "application/octet-stream"
    if hasattr(image, "save") and hasattr(image, "size"):  # a PIL image (PIL is not imported here)
        import io

        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue(), "image/png"
    raise TypeError(f"an image is a URL, a path, bytes or a PIL image, not {type(image).__name__}")


def _final(event: Event) -> bool:
    return event.type in FINAL_EVENT_TYPES


class AsyncClient:
    """A dash-ray gateway from asyncio code.

    `url` and `token` default to `DASH_URL` / `DASH_TOKEN` (and `http://127.0.0.1:8000`).
    `retries`: how many times a submit that was rate limited (429), found the server
    unavailable (503) or lost its connection is sent again, after `Retry-After` or a backoff.
    """

    def __init__(self, url: str | None = None, token: str | None = None, *, ws_url: str | None = None,
                 timeout: float = 30.0, retries: int = 0, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = (url or os.environ.get("DASH_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else os.environ.get("DASH_TOKEN")
        self.ws_url = ws_url or ("ws" + self.url[4:] if self.url.startswith("http") else self.url) + "/ws"
        self.retries = retries
        self._uploads: bool | None = None  # does the server take uploads (None: not known yet)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self.http.aclose()

    def __repr__(self) -> str:
        return f"AsyncClient({self.url!r})"

    # ------------------------------------------------------------------ HTTP
    async def request(self, method: str, path: str, *, json_body: Any = None, params: dict[str, Any] | None = None,
                      retries: int = 0) -> Any:
        """One API call; the decoded JSON answer, or the typed error. `retries`: see the class."""
        backoff = _backoff(10.0)
        for attempt in range(retries + 1):
            try:
                resp = await self.http.request(method, path, json=json_body,
                                               params={k: v for k, v in (params or {}).items() if v is not None})
            except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError,
                    httpx.TimeoutException) as exc:
                if attempt >= retries:
                    raise Unavailable(f"cannot reach {self.url}: {type(exc).__name__}", code="unreachable") from exc
                await pause(backoff.delay(attempt))
                continue
            if resp.status_code < 400:
                return resp.json() if resp.content else None
            err = _error_of(resp)
            if attempt >= retries or not isinstance(err, RateLimited | Unavailable):
                raise err
            await pause(err.retry_after if err.retry_after is not None else backoff.delay(attempt))
        raise AssertionError("unreachable")

    async def fetch(self, path: str) -> bytes:
        """The bytes of an artifact (`/v1/artifacts/...`, as results name them)."""
        resp = await self.http.get(path)
        if resp.status_code >= 400:
            raise _error_of(resp)
        return resp.content

    # ------------------------------------------------------------------ images
    async def upload(self, image: Any) -> str:
        """Upload an image (a path, bytes or a PIL image); its `upload://` reference, which
        payloads take as `imageUrl` / `imageUrls`."""
        data, mime = _image_bytes(image)
        resp = await self.http.post("/v1/uploads", content=data, headers={"Content-Type": mime})
        if resp.status_code >= 400:
            raise _error_of(resp)
        return str(resp.json()["url"])

    async def image_url(self, image: Any) -> str:
        """What a payload should carry for an image: a URL as is; otherwise an upload (a `data:`
        URL on a server without uploads)."""
        if is_image_url(image):
            return str(image)
        if self._uploads is not False:
            try:
                ref = await self.upload(image)
                self._uploads = True
                return ref
            except NotFound:
                self._uploads = False  # an older server: inline instead
        return image_ref(image)

    # ------------------------------------------------------------------ submit
    async def submit(self, queue: str, payload: dict[str, Any], options: dict[str, Any] | None = None, *,
                     retries: int | None = None) -> AsyncJobHandle:
        """Queue a job on `queue` with the seed's payload (camelCase keys) and job options; the
        job gets an id here unless the payload has one, so retries never make two jobs."""
        body = dict(payload)
        q = QUEUE_TABLE.get(queue)  # the payload's own id field (`loraId` on training); unknown here: jobId
        id_field = q.id_field if q is not None else "jobId"
        opts = dict(options or {})
        if not body.get(id_field) and not opts.get("jobId"):
            body[id_field] = uuid.uuid4().hex
        if opts:
            body["options"] = opts
        data = await self.request("POST", f"/v1/jobs/{queue}", json_body=body,
                                  retries=self.retries if retries is None else retries)
        return AsyncJobHandle(self, JobView.model_validate(data))

    async def submit_generation(self, prompt: str, *, settings: dict[str, Any] | None = None, lora: str | None = None,
                                negative_prompt: str | None = None, job_id: str | None = None,
                                options: dict[str, Any] | None = None, retries: int | None = None) -> AsyncJobHandle:
        """Generate images from a prompt. `settings`: steps, width, height, seed, numImages, model,
        guidanceScale...; `lora`: a trained LoRA's id (a training handle's `lora_id`)."""
        s = dict(settings or {})
        if lora:
            s["loraId"] = lora
        if negative_prompt:
            s["negativePrompt"] = negative_prompt
        payload: dict[str, Any] = {"prompt": prompt, "settings": s}
        if job_id:
            payload["jobId"] = job_id
        return await self.submit("generation", payload, options, retries=retries)

    async def submit_upscaling(self, image: Any, scale: int = 2, model: str | None = None, *,
                               job_id: str | None = None, options: dict[str, Any] | None = None,
                               retries: int | None = None) -> AsyncJobHandle:
        """Upscale an image (a URL, a path, bytes or a PIL image, uploaded first) by 2 or 4,
        with `model` ("lanczos" or a registered diffusers upscaler)."""
        payload: dict[str, Any] = {"imageUrl": await self.image_url(image), "scale": scale}
        if model:
            payload["model"] = model
        if job_id:
            payload["jobId"] = job_id
        return await self.submit("upscaling", payload, options, retries=retries)

    async def submit_training(self, lora_id: str, prompt: str, images: Iterable[Any], *,
                              settings: dict[str, Any] | None = None, priority: int | None = None,
                              options: dict[str, Any] | None = None, retries: int | None = None) -> AsyncJobHandle:
        """Train a LoRA named `lora_id` on images (URLs, or paths, bytes or PIL images, which are
        uploaded); `priority`
        1 (high) to 3. `settings`: epochs, rank, resolution, learningRate, batchSize, seed, baseModel."""
        opts = dict(options or {})
        if priority is not None:
            opts["priority"] = priority
        urls = [await self.image_url(i) for i in images]
        payload = {"loraId": lora_id, "prompt": prompt, "imageUrls": urls,
                   "settings": dict(settings or {})}
        return await self.submit("training", payload, opts, retries=retries)

    # ------------------------------------------------------------------ jobs
    def job(self, job_id: str, queue: str = "") -> AsyncJobHandle:
        """A handle on an existing job (nothing is fetched until asked)."""
        return AsyncJobHandle(self, JobView(id=job_id, queue=queue, status="waiting"), fetched=False)

    async def get(self, job_id: str) -> JobView:
        """A job's current view."""
        return JobView.model_validate(await self.request("GET", f"/v1/jobs/{job_id}"))

    async def logs(self, job_id: str, limit: int = 1000) -> list[str]:
        """A job's log lines, oldest first (model loaded, resolution, LoRA, per-epoch loss, ...)."""
        return list((await self.request("GET", f"/v1/jobs/{job_id}/logs", params={"limit": limit}))["logs"])

    async def webhook_secret(self) -> str:
        """Your webhook signing secret (`whsec_...`), for `verify_webhook` on your receiver."""
        return str((await self.request("GET", "/v1/webhooks/secret"))["secret"])

    async def cancel(self, job_id: str) -> JobView:
        """Cancel a job: a waiting one is removed, a running one stops at its next step."""
        return JobView.model_validate(await self.request("DELETE", f"/v1/jobs/{job_id}"))

    async def retry(self, job_id: str) -> JobView:
        """Run a failed or cancelled job again."""
        return JobView.model_validate(await self.request("POST", f"/v1/jobs/{job_id}/retry"))

    async def move(self, job_id: str, *, to: str | None = None, before: str | None = None,
                   priority: int | None = None) -> JobView:
        """Reorder a waiting job (one of): `to="front"` (first of your waiting jobs of its
        priority; an admin's: the front of the whole queue), `before=` another of your waiting
        jobs of the same priority, `priority=` 1-3 (admins: to the back of that priority). Your
        jobs only trade places among themselves, never ahead of another user's."""
        body = {k: v for k, v in (("to", to), ("before", before), ("priority", priority)) if v is not None}
        return JobView.model_validate(await self.request("POST", f"/v1/jobs/{job_id}/move", json_body=body))

    async def flow(self, tree: dict[str, Any]) -> AsyncJobHandle:
        """Make a job and the jobs it waits for in one step (`POST /v1/flows`): `tree` is
        `{queue, payload, options?, onFailure?, children: [...]}`, each child a tree too. A
        payload may take a child's image as `job_image(child_id)` (give the child a `jobId`).
        Returns the job's handle; `.children` holds its children's, in order. Each job without an
        id gets one here, so a request sent again never makes two flows."""
        return self._flow_handle(FlowView.model_validate(await self.request("POST", "/v1/flows",
                                                                            json_body=_with_ids(tree))))

    def _flow_handle(self, view: FlowView) -> AsyncJobHandle:
        handle = AsyncJobHandle(self, view.job)
        handle.children = [self._flow_handle(c) for c in view.children]
        return handle

    async def chain(self, *steps: dict[str, Any]) -> AsyncJobHandle:
        """Jobs that run one after the other, made in one step (a flow): each step is `{queue,
        payload, options?}`, and may take the image of the step before it as `previous_image()`
        (`previous_image(1)`: its second). Returns the last step's handle (`.children`: the one
        before it, and so on). E.g. generate, then upscale what it made:

            client.chain({"queue": "generation", "payload": {"prompt": "a fox"}},
                         {"queue": "upscaling", "payload": {"imageUrl": previous_image(), "scale": 2}})
        """
        if not steps:
            raise ValueError("chain: give at least one step")
        tree: dict[str, Any] | None = None
        before: str | None = None
        for step in steps:
            payload = dict(step["payload"])
            job_id, options = _identified(step["queue"], payload, step.get("options"))
            payload = _with_previous(payload, before)
            node: dict[str, Any] = {"queue": step["queue"], "payload": payload, "options": options}
            if tree is not None:
                node["children"] = [tree]
            tree, before = node, job_id
        assert tree is not None
        return await self.flow(tree)

    async def schedule(self, name: str, queue: str, payload: dict[str, Any], *, every: float | None = None,
                       cron: str | None = None, tz: str | None = None, end_at: float | str | None = None,
                       limit: int | None = None, options: dict[str, Any] | None = None) -> ScheduleView:
        """Run a job of `payload` on `queue` again and again: `every` N seconds, or on a `cron`
        pattern (in `tz`), until `end_at` or `limit` runs. Each run is one of your jobs (in your
        history, with its own events). The same `name` again replaces the schedule."""
        body: dict[str, Any] = {"name": name, "queue": queue, "payload": payload}
        for key, value in (("every", every), ("cron", cron), ("tz", tz), ("endAt", end_at), ("limit", limit),
                           ("options", options)):
            if value is not None:
                body[key] = value
        return ScheduleView.model_validate(await self.request("POST", "/v1/schedules", json_body=body))

    async def schedules(self, user_id: str | None = None) -> list[ScheduleView]:
        """Your schedules, soonest next run first (admins: `user_id`, or "*" for all)."""
        return [ScheduleView.model_validate(v) for v in await self.request("GET", "/v1/schedules",
                                                                         params={"userId": user_id})]

    async def unschedule(self, name: str, user_id: str | None = None) -> ScheduleView:
        """Stop one of your schedules (its waiting run goes; a running one ends as it would)."""
        return ScheduleView.model_validate(await self.request("DELETE", f"/v1/schedules/{name}",
                                                              params={"userId": user_id}))

    async def jobs(self, queue: str | None = None, status: str | None = None, limit: int | None = None, *,
                   page_size: int = 50, user_id: str | None = None, text: str | None = None,
                   id_prefix: str | None = None, since: float | str | None = None,
                   until: float | str | None = None) -> AsyncIterator[JobView]:
        """Your jobs, newest first, fetched a page at a time as you iterate (`limit`: at most
        this many in all). Search: `text` in the prompt (any case), `id_prefix`, and a creation
        time range `since` / `until` (Unix seconds or ISO 8601)."""
        cursor, seen = None, 0
        while True:
            size = min(page_size, 200, (limit - seen) if limit else 200)
            page = JobList.model_validate(await self.request("GET", "/v1/jobs", params={
                "queue": queue, "status": status, "limit": size, "cursor": cursor, "userId": user_id,
                "q": text, "idPrefix": id_prefix, "from": since, "to": until}))
            for view in page.jobs:
                yield view
                seen += 1
                if limit and seen >= limit:
                    return
            cursor = page.next_cursor
            if not cursor:  # (a search's page may be empty and still have more to read)
                return

    async def usage(self) -> UsageView:
        """What you hold, each against its limit: bytes your jobs keep, unfinished jobs, uploaded
        bytes, sockets and event streams open."""
        return UsageView.model_validate(await self.request("GET", "/v1/usage"))

    async def queues(self) -> list[QueueView]:
        """Each queue: counts per state, concurrency, GPU share, paused."""
        return [QueueView.model_validate(q) for q in await self.request("GET", "/v1/queues")]

    async def pause(self, queue: str) -> QueueView:
        """Stop handing out the queue's jobs (admin)."""
        return QueueView.model_validate(await self.request("POST", f"/v1/queues/{queue}/pause"))

    async def resume(self, queue: str) -> QueueView:
        """Hand out the queue's jobs again (admin)."""
        return QueueView.model_validate(await self.request("POST", f"/v1/queues/{queue}/resume"))

    # ------------------------------------------------------------------ events
    async def events(self, job_ids: Iterable[str], since: dict[str, int] | int | None = None,
                     *, until_final: bool = True, places: bool = False) -> AsyncIterator[Event]:
        """The events of jobs over one socket, in order per job, each once.

        `since`: None (each job's current state first, then what follows), 0 (everything from
        each job's start that the server keeps) or a per-job map of the last `seq` seen. The
        socket reconnects by itself and resubscribes with the last `seq` of each job, so
        nothing is lost or repeated. Ends when every job is final (`until_final`). `places`:
        also yield the refreshes of a waiting job's place (`queue_position`, `eta_s`), which
        are not in the job's log and carry `seq` 0.
        """
        import websockets
        from websockets.exceptions import InvalidStatus, WebSocketException

        ids = list(dict.fromkeys(job_ids))
        seen = Seen({j: since for j in ids} if isinstance(since, int) else since)
        open_ids = set(ids)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        backoff = _backoff(_RECONNECT_MAX_S)
        while open_ids:
            try:
                async with websockets.connect(self.ws_url, additional_headers=headers, open_timeout=10,
                                              max_size=None, ping_interval=20) as ws:
                    pending = sorted(open_ids)
                    for i in range(0, len(pending), MAX_SUBSCRIBE_IDS):
                        chunk = pending[i:i + MAX_SUBSCRIBE_IDS]
                        msg: dict[str, Any] = {"type": "subscribe", "jobIds": chunk}
                        cursors = seen.since(chunk)
                        if cursors:
                            msg["since"] = cursors
                        await ws.send(json.dumps(msg))
                    async for raw in ws:
                        data = json.loads(raw)
                        kind = data.get("type")
                        if kind == "error":
                            _raise_ws_error(data, open_ids)
                            continue
                        if kind not in EVENT_TYPES:
                            continue
                        backoff.reset()
                        event = parse_event(data)
                        if event.job_id not in open_ids:
                            continue  # not asked for
                        if "seq" not in data:  # a refresh of a waiting job's place: not in the log
                            if places:
                                yield event
                            continue
                        if not seen.fresh(event.job_id, event.seq):
                            continue  # already seen
                        yield event
                        if _final(event) and until_final:
                            open_ids.discard(event.job_id)
                            if not open_ids:
                                return
            except InvalidStatus as exc:
                if exc.response.status_code in (401, 403):
                    raise Unauthorized("the server refused the socket", status=exc.response.status_code) from exc
            except (OSError, asyncio.TimeoutError, WebSocketException, Unavailable):
                pass  # the gateway restarted or the network blinked: reconnect with `since`
            await backoff.sleep()

    async def feed(self, scope: str = "mine", *, previews: bool = False,
                   places: bool = False) -> AsyncIterator[Event]:
        """Every event of your jobs as it happens, over one socket: those unfinished now, and each
        new one the moment it is made, from any client (a notebook, the CLI, the dashboard, a
        plain BullMQ producer). Admins: `scope="all"`, every user's new jobs. Reconnects by itself:
        the jobs it follows get the events they missed (`since`), and those made meanwhile that
        are still unfinished are picked up. Never ends by itself: `break` out of it.
        `previews`: also the `job:preview` images (off by default: they are large)."""
        import websockets
        from websockets.exceptions import InvalidStatus, WebSocketException

        seen = Seen()  # the unfinished jobs followed, and the last seq of each
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        backoff = _backoff(_RECONNECT_MAX_S)
        while True:
            try:
                async with websockets.connect(self.ws_url, additional_headers=headers, open_timeout=10,
                                              max_size=None, ping_interval=20) as ws:
                    pending = sorted(seen.last)
                    for i in range(0, len(pending), MAX_SUBSCRIBE_IDS):
                        chunk = pending[i:i + MAX_SUBSCRIBE_IDS]
                        await ws.send(json.dumps({"type": "subscribe", "jobIds": chunk, "since": seen.since(chunk),
                                                  "previews": previews}))
                    await ws.send(json.dumps({"type": "subscribe", "scope": scope, "previews": previews}))
                    async for raw in ws:
                        data = json.loads(raw)
                        kind = data.get("type")
                        if kind == "error":
                            if data.get("code") == "forbidden":
                                raise error_from(403, {"error": data})
                            if data.get("code") == "not_found":  # a followed job gone meanwhile: let go
                                seen.last.pop(data.get("jobId") or "", None)
                            else:
                                _raise_ws_error(data, set())
                            continue
                        if kind not in EVENT_TYPES:
                            continue
                        backoff.reset()
                        event = parse_event(data)
                        if "seq" not in data:
                            if places:
                                yield event
                            continue
                        if not seen.fresh(event.job_id, event.seq):
                            continue
                        if _final(event):
                            del seen.last[event.job_id]  # no longer followed (a retry comes back by the feed)
                        yield event
            except InvalidStatus as exc:
                if exc.response.status_code in (401, 403):
                    raise Unauthorized("the server refused the socket", status=exc.response.status_code) from exc
            except (OSError, asyncio.TimeoutError, WebSocketException, Unavailable):
                pass  # reconnect: the jobs followed resume with `since`
            await backoff.sleep()

    async def watch(self, handles: Iterable[AsyncJobHandle | str]) -> AsyncIterator[Event]:
        """The live events of several jobs over one socket, until all are final."""
        by_id = {h if isinstance(h, str) else h.id: h for h in handles}
        async for event in self.events(list(by_id)):
            handle = by_id[event.job_id]
            if isinstance(handle, AsyncJobHandle):
                handle._seen(event)
            yield event

    async def wait_all(self, handles: Iterable[AsyncJobHandle], *, timeout: float | None = None,
                       progress: bool = False, raise_on_failure: bool = False) -> list[JobView]:
        """Wait until every job is final (one socket for all); their final views, in order.
        `progress`: one bar per job."""
        from dash_ray.client.display import Bars

        handles = list(handles)
        await _follow(self.watch(handles), Bars(handles) if progress else None, timeout)
        views = await asyncio.gather(*(h.status() for h in handles))
        if raise_on_failure:
            for view in views:
                if is_failure(view.status):
                    raise JobFailed(view)
        return list(views)


def job_image(job_id: str, n: int = 0) -> str:
    """A reference to a job's `n`th image, for another job's payload: `job://<id>/images/<n>`."""
    return f"job://{job_id}/images/{n}"


def previous_image(n: int = 0) -> str:
    """In `AsyncClient.chain`: the `n`th image of the step before."""
    return f"job://{_PREVIOUS}/images/{n}"


_PREVIOUS = "{previous}"


def _identified(queue: str, payload: dict[str, Any], options: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """A job's id (its payload's own id field, `loraId` on training; else `options.jobId`; else a
    new one, set as `options.jobId`) and its options."""
    q = QUEUE_TABLE.get(queue)
    opts = dict(options or {})
    job_id = payload.get(q.id_field if q is not None else "jobId") or opts.get("jobId")
    if not job_id:
        job_id = opts["jobId"] = uuid.uuid4().hex
    return str(job_id), opts


def _with_ids(tree: dict[str, Any]) -> dict[str, Any]:
    """A flow with an id on every job that has none (its `options.jobId`)."""
    raw = tree.get("payload")
    _job_id, options = _identified(str(tree.get("queue")), raw if isinstance(raw, dict) else {}, tree.get("options"))
    out = {**tree, "options": options}
    if isinstance(tree.get("children"), list):
        out["children"] = [_with_ids(c) if isinstance(c, dict) else c for c in tree["children"]]
    return out


def _with_previous(value: Any, before: str | None) -> Any:
    """`value` with each `previous_image()` made the previous step's (`before`)."""
    if isinstance(value, str) and value.startswith(f"job://{_PREVIOUS}/"):
        if before is None:
            raise ValueError("chain: the first step has no step before it")
        return value.replace(_PREVIOUS, before, 1)
    if isinstance(value, dict):
        return {k: _with_previous(v, before) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_previous(v, before) for v in value]
    return value


def _error_of(resp: httpx.Response) -> ApiError:
    """The typed error of an HTTP error answer (its JSON error body, or its text)."""
    try:
        body = resp.json()
    except ValueError:
        body = {"error": {"code": "http_error", "message": resp.text[:500]}}
    return error_from(resp.status_code, body, resp.headers.get("retry-after"))


def _raise_ws_error(data: dict[str, Any], open_ids: set[str]) -> None:
    """A WebSocket `error`: raise what the caller must know; skip what a reconnect fixes."""
    code = data.get("code", "")
    if code == "unavailable":
        raise Unavailable(data.get("message", "unavailable"), code=code)
    if code == "not_found" and data.get("jobId") in open_ids:
        raise NotFound(data.get("message", "not found"), status=404, code=code, body=data)
    if code in ("unauthorized", "too_many_sockets", "bad_request", "too_many"):
        raise error_from(0, {"error": data})


async def _follow(stream: AsyncIterator[Event], bars: Any, timeout: float | None) -> None:
    """Read an event stream to its end (or TimeoutError after `timeout` s), moving the bars."""

    async def run() -> None:
        async for event in stream:
            if bars:
                bars.update(event)

    try:
        await asyncio.wait_for(run(), timeout)
    finally:
        if bars:
            bars.close()


class AsyncJobHandle:
    """One job: its status, events, result and images; `await handle.wait()` until it ends."""

    def __init__(self, client: AsyncClient, view: JobView, *, fetched: bool = True) -> None:
        self.client = client
        self.view = view
        self._fetched = fetched
        self.history: list[Event] = []  # events this handle has seen, in order
        self.children: list[AsyncJobHandle] = []  # a flow's: the jobs this one waits for

    @property
    def id(self) -> str:
        """The job's id."""
        return self.view.id

    @property
    def queue(self) -> str:
        """The job's queue."""
        return self.view.queue

    @property
    def lora_id(self) -> str | None:
        """A training job's LoRA id (what `submit_generation(..., lora=...)` takes)."""
        return self.view.id if self.view.queue == "training" else None

    def __repr__(self) -> str:
        return f"<JobHandle {self.queue}/{self.id} {self.view.status} {self.view.progress:.0f}%>"

    def _seen(self, event: Event) -> None:
        """The view after an event: its status is the one the event carries (previews and log
        lines carry none); a place refresh (no seq) leaves the seq."""
        self.history.append(event)
        update: dict[str, Any] = {"seq": event.seq or self.view.seq}
        if isinstance(event, JobProgressEvent):
            update.update(status=event.status, progress=event.progress, message=event.message,
                          queue_position=event.queue_position, eta_s=event.eta_s, finish_eta_s=event.finish_eta_s)
        elif isinstance(event, JobCompletedEvent):
            update.update(status=event.status, progress=100.0, result=event.result)
        elif isinstance(event, JobFailedEvent):
            update.update(status=event.status, error=event.error)
        self.view = self.view.model_copy(update=update)

    async def status(self) -> JobView:
        """The job's current view (fetched)."""
        self.view = await self.client.get(self.id)
        self._fetched = True
        return self.view

    async def events(self, since: int | None = 0) -> AsyncIterator[Event]:
        """The job's events until it ends: by default all of them from its start (`since=0`),
        or what follows its current state (`since=None`), or after a seq."""
        async for event in self.client.events([self.id], since=None if since is None else {self.id: since}):
            self._seen(event)
            yield event

    async def wait(self, timeout: float | None = None, *, progress: bool = False,
                   raise_on_failure: bool = True) -> JobView:
        """Wait until the job ends; its final view. Raises JobFailed if it failed or was
        cancelled (unless `raise_on_failure=False`), TimeoutError after `timeout` seconds.
        `progress`: a live bar (a widget in Jupyter) with the step or epoch and the loss."""
        from dash_ray.client.display import Bars

        if not (self._fetched and self.view.done):
            await _follow(self.events(since=None), Bars([self]) if progress else None, timeout)
            await self.status()
        if raise_on_failure and is_failure(self.view.status):
            raise JobFailed(self.view)
        return self.view

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the job and return its result (JobFailed if it did not complete)."""
        return (await self.wait(timeout)).result

    async def cancel(self) -> JobView:
        """Cancel the job."""
        self.view = await self.client.cancel(self.id)
        return self.view

    async def move(self, **where: Any) -> JobView:
        """Reorder it while it waits: `to="front"`, `before=`, `priority=` (see AsyncClient.move)."""
        self.view = await self.client.move(self.id, **where)
        return self.view

    def image(self, n: int = 0) -> str:
        """A reference to this job's `n`th image, for another job's payload (`job://<id>/images/<n>`):
        read when that job starts. A job submitted with it while this one runs waits for it (the
        server adds it to the job's `options.after`)."""
        return job_image(self.id, n)

    async def then_upscale(self, scale: int = 2, model: str | None = None, n: int = 0,
                           options: dict[str, Any] | None = None) -> AsyncJobHandle:
        """Upscale this job's `n`th image: a new job, made now, that waits for this one to complete
        (and fails unrun if it does not)."""
        payload: dict[str, Any] = {"imageUrl": self.image(n), "scale": scale}
        if model:
            payload["model"] = model
        return await self.client.submit("upscaling", payload, options)

    async def retry(self) -> JobView:
        """Run the failed or cancelled job again."""
        self.view = await self.client.retry(self.id)
        self.history.clear()
        return self.view

    def artifact_urls(self) -> list[str]:
        """The artifact paths of the job's result (generated images, the upscaled image, LoRA weights)."""
        result = self.view.result if isinstance(self.view.result, dict) else {}
        urls = list(result.get("images") or [])
        for key in ("image", "weights"):
            if isinstance(result.get(key), str):
                urls.append(result[key])
        return [u for u in urls if isinstance(u, str)]

    async def image_bytes(self) -> list[bytes]:
        """The PNG bytes of the job's images (generation or upscaling; waits for the job)."""
        await self.wait()
        urls = [u for u in self.artifact_urls() if not u.split("?", 1)[0].endswith(".safetensors")]
        return list(await asyncio.gather(*(self.client.fetch(u) for u in urls)))

    async def images(self) -> list[Any]:
        """The job's images as PIL images (needs Pillow: `pip install dash-ray[notebook]`)."""
        from dash_ray.client.display import to_pil

        return [to_pil(b) for b in await self.image_bytes()]

    async def download(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Save the job's result files (images, LoRA weights) in `directory`; their paths."""
        await self.wait()
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for url in self.artifact_urls():
            data = await self.client.fetch(url)
            path = out / f"{self.id}-{url.split('?', 1)[0].rsplit('/', 1)[-1]}"
            path.write_bytes(data)
            paths.append(path)
        return paths

    async def logs(self) -> list[str]:
        """The job's log lines, oldest first."""
        return await self.client.logs(self.id)

    def previews(self) -> list[JobPreviewEvent]:
        """The `job:preview` events seen so far (latent previews, training samples), oldest first."""
        return [e for e in self.history if isinstance(e, JobPreviewEvent)]

    async def losses(self) -> list[tuple[int, float]]:
        """A training job's (epoch, loss) per finished epoch, from its events."""
        if not self.history or not _final(self.history[-1]):
            self.history = []
            async for _ in self.events(since=0):
                pass
        out: dict[int, float] = {}
        for e in self.history:
            if isinstance(e, JobProgressEvent) and e.epoch is not None and e.loss is not None:
                out[e.epoch] = e.loss
        return sorted(out.items())

