"""The gateway app factory: REST + WebSocket on one port, given its services (no Ray needed)."""

from __future__ import annotations

import asyncio
import csv
import hmac
import io
import json
import logging
import mimetypes
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Header, Query, Request, Response, WebSocket
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError, create_model

from dash_ray import __version__, runtime, tracing
from dash_ray.errors import (
    BodyTooLarge,
    DashError,
    Forbidden,
    InvalidJobState,
    InvalidPayload,
    JobConflict,
    JobNotFound,
    QuotaExceeded,
    RateLimited,
    Unauthorized,
    UnknownQueue,
)
from dash_ray.gateway import errors
from dash_ray.gateway.auth import Principal, bearer
from dash_ray.gateway.deps import (
    Audit,
    AuditTrail,
    Caller,
    Svc,
    _owned,
    _signed,
    _signed_list,
    caller_or_query,
)
from dash_ray.gateway.flows import router as flows_router
from dash_ray.gateway.metrics import render
from dash_ray.gateway.policy import job_org, with_waits
from dash_ray.gateway.schedules import router as schedules_router
from dash_ray.gateway.services import GatewayServices
from dash_ray.gateway.streams import prefer_wait_s, wait_final
from dash_ray.gateway.streams import router as streams_router
from dash_ray.gateway.ws import serve_socket
from dash_ray.models import JobList, JobOptions, JobView, MoveRequest, QueueDef, QueueView
from dash_ray.models.base import WireModel, is_user_id
from dash_ray.models.images import IMAGE_FORMATS_TEXT, PIL_FORMATS, sniff_image
from dash_ray.models.options import BudgetRequest
from dash_ray.models.payloads import JobPayload, upload_path
from dash_ray.models.queues import bad_field, queue_def
from dash_ray.models.views import (
    Allowance,
    BudgetUse,
    BudgetView,
    GpuUsage,
    MemoryPeak,
    ShareUse,
    UsageView,
)
from dash_ray.queues.ledger import METRICS as LEDGER_METRICS
from dash_ray.queues.ledger import ORG, Budget, Charge, Group, org_id, resets_at
from dash_ray.queues.ledger import total as ledger_total
from dash_ray.queues.reader import Search
from dash_ray.services import InvalidArtifactPath

__all__ = ["create_app"]

log = logging.getLogger(__name__)


# Each route's error responses in OpenAPI: what it declares with `@raises`, plus its dependencies'
# and the edge's (gateway/errors.py).
router = APIRouter(route_class=errors.DocumentedRoute)


async def _submit(queue: str, body: JobPayload, options: JobOptions | None, who: Principal,
                  svc: GatewayServices, prefer: str | None = None) -> Response:
    if body.user_id and body.user_id != who.user_id and not who.admin:
        raise Forbidden("userId in the payload does not match the token", field="userId")
    owner = body.user_id if (who.admin and body.user_id) else who.user_id
    svc.limiter.refused_lately(owner)  # over their rate a moment ago: 429 at once, nothing checked
    # the token's weight is its user's (an admin submitting for someone else uses theirs), within
    # the owner's GPU budget: past a hard one, refused here
    weight = await svc.policy.budget_weight(owner, who.weight if owner == who.user_id else None, who)
    waits: set[str] = set()  # the unfinished jobs of the owner's its inputs name: it waits for them
    await svc.policy.check(queue, body, options, who, owner, waits=waits)
    if waits:
        options = with_waits(options, waits)
    quota = svc.policy.quota(queue, options, who)
    if options is not None and options.webhook is not None:
        await svc.limiter.check(owner)  # counted before the webhook's lookup: refused callers cost none
        await svc.policy.check_webhook(options, owner)
    else:  # counted by the script that makes the job, with the owner's other limits: one round trip
        quota = replace(quota, rate=svc.limiter.rate)
    try:
        if tracing.tracer() is None:
            result = await svc.store.add(queue, body, options, user_id=owner, weight=weight, quota=quota,
                                         org=job_org(owner, who))
        else:  # the submit's span; the job carries it to the consumer and the worker
            with tracing.span(f"submit {queue}", kind="SERVER", **{"dash.queue": queue, "enduser.id": owner}) as s:
                result = await svc.store.add(queue, body, options, user_id=owner, weight=weight, quota=quota,
                                             trace=tracing.carrier(), org=job_org(owner, who))
                s.set_attribute("dash.job_id", result.job.id)
    except RateLimited as exc:
        if quota.rate is not None and hasattr(exc, "wait_ms"):  # the create script's refusal of the rate
            raise svc.limiter.refused(owner, exc.wait_ms) from None
        raise
    except InvalidPayload:
        if quota.rate is not None:  # refused before the create counted it (an unknown model, LoRA): count it
            await svc.limiter.check(owner)
        raise
    if result.job.cached and svc.settings.ledger:  # answered by the result cache: counted in the ledger, free
        await _count_cached(svc, queue, body, owner)
    if owner != who.user_id:  # an admin's submit for another user (this path has no address to give)
        await AuditTrail(svc.audit, who, None)("submit", result.job.id, owner=owner, queue=queue)
    wait_s = min(prefer_wait_s(prefer), svc.settings.max_prefer_wait_s)
    if wait_s > 0 and await wait_final(svc, result.job.id, wait_s):
        # `Prefer: wait=N` (RFC 7240): the job ended within N seconds: 200 with its outcome
        resp = _signed(svc, (await svc.store.get(result.job.id)).wire(), 200)
        resp.headers["preference-applied"] = f"wait={wait_s:g}"
        return resp
    return _signed(svc, result.job.wire() if wait_s <= 0 else (await svc.store.get(result.job.id)).wire(),
                   201 if result.created else 200)


async def _count_cached(svc: GatewayServices, queue: str, body: JobPayload, owner: str) -> None:
    try:
        model = queue_def(queue).model_of(body.wire(exclude_none=True)) or ""
        await svc.store.ledger.charge([Charge(owner, queue, model, 0.0, 0.0, "cached", cached=True)])
    except Exception:
        log.warning("could not count a cached answer in the ledger", exc_info=True)


# A submit route's handler of a validated body: (body, caller, services, Prefer header) -> answer.
SubmitHandler = Callable[[Any, Principal, GatewayServices, "str | None"], Awaitable[Response]]


def _add_submit_route(jobs: APIRouter, q: QueueDef, fast: dict[str, tuple[type[BaseModel], SubmitHandler]]) -> None:
    """`POST /v1/jobs/<queue>`: the queue's payload plus optional job options, typed in OpenAPI.
    Its body model and handler also go in `fast`, which the edge serves without FastAPI's router."""
    body_model = create_model(f"{q.name.capitalize()}Submit", __base__=q.payload,
                              __doc__=f"The {q.title} payload plus optional job options.",
                              options=(JobOptions | None, None))
    fields = tuple(q.payload.model_fields)

    @errors.raises(UnknownQueue, Forbidden, InvalidPayload, RateLimited, QuotaExceeded, JobConflict)
    async def submit(body: Any, who: Principal, svc: GatewayServices, prefer: str | None = None) -> Response:
        # The body is the queue's payload plus `options`, validated once: the payload is its
        # fields as they are (no second parse).
        payload = q.payload.model_construct(_fields_set=body.model_fields_set - {"options"},
                                            **{name: getattr(body, name) for name in fields})
        return await _submit(q.name, payload, body.options, who, svc, prefer)

    fast[f"/v1/jobs/{q.name}"] = (body_model, submit)

    # Real types, not the strings `from __future__ import annotations` leaves: FastAPI reads them.
    submit.__annotations__ = {"body": body_model, "who": Caller, "svc": Svc,
                              "prefer": Annotated[str | None, Header()], "return": Response}
    jobs.add_api_route(
        f"/v1/jobs/{q.name}", submit, methods=["POST"], status_code=201, response_model=JobView, tags=["jobs"],
        responses={200: {"model": JobView, "description": "The job of an id seen before with the same payload, "
                                                          "or one that ended within `Prefer: wait=N`"}},
        name=f"submit_{q.name}", summary=f"Queue a {q.title} job",
        description="201 with the new job; 200 with the existing job when its id was seen before "
                    "with the same payload; 409 when it was seen with another. With `Prefer: wait=N`, "
                    "200 with the finished job if it ends within N seconds (at most DASH_MAX_PREFER_WAIT_S), "
                    "else 201 with the job as it is then.",
        include_in_schema=not q.test_only,
    )


def _submit_routes(queues: Iterable[str]) -> tuple[APIRouter, dict[str, tuple[type[BaseModel], SubmitHandler]]]:
    """The submit routes of the queues a replica serves, made when its app is: a plug-in queue
    whose definition arrived after this module was imported gets its typed route too. Also
    their fast path: path -> (body model, handler)."""
    jobs = APIRouter(route_class=errors.DocumentedRoute)
    fast: dict[str, tuple[type[BaseModel], SubmitHandler]] = {}
    for name in queues:
        _add_submit_route(jobs, queue_def(name), fast)
    return jobs, fast


@router.post("/v1/jobs/{queue}", status_code=201, response_model=JobView, tags=["jobs"],
             include_in_schema=False)
async def submit_unknown(queue: str, who: Caller) -> JSONResponse:
    """A queue that does not exist: 404 `unknown_queue` (after auth)."""
    raise UnknownQueue(queue)


@router.get("/v1/jobs/{job_id}", response_model=JobView, tags=["jobs"])
@errors.raises(JobNotFound)
async def get_job(job_id: str, who: Caller, svc: Svc) -> Response:
    """One of your jobs."""
    return _signed(svc, (await _owned(job_id, who, svc)).wire())


@router.get("/v1/jobs", response_model=JobList, tags=["jobs"])
@errors.raises(Forbidden, UnknownQueue, InvalidPayload)
async def list_jobs(
    who: Caller, svc: Svc,
    queue: str | None = None,
    status: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    cursor: Annotated[str | None, Query(max_length=32)] = None,
    user_id: Annotated[str | None, Query(alias="userId", max_length=128)] = None,
    include: Annotated[str | None, Query(pattern="^data$")] = None,
    q: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    id_prefix: Annotated[str | None, Query(alias="idPrefix", min_length=1, max_length=128)] = None,
    from_: Annotated[str | None, Query(alias="from", max_length=40)] = None,
    to: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    """Your jobs, newest first (history); pass `nextCursor` back as `cursor` for the next page.
    Each job's payload (`data`) is left out unless `include=data`. Admins may list another
    user's jobs (`userId`), or every user's (`userId=*`).

    Search: `q` (text in the prompt, any case), `idPrefix`, and a creation time range `from`
    (inclusive) / `to` (exclusive), each Unix seconds or an ISO 8601 time. A search reads the
    history index (yours, or everyone's for `userId=*`), never every job, and at most 50 x
    `limit` entries a call: a page may hold fewer than `limit` jobs and still give a
    `nextCursor`, to go on searching older history."""
    if user_id and user_id != who.user_id and not who.admin:
        raise Forbidden("only an admin may list another user's jobs")
    search = Search(text=q, id_prefix=id_prefix, since_s=_instant("from", from_), until_s=_instant("to", to))
    page = await svc.store.list(user_id or who.user_id, queue=queue, status=status, limit=limit, cursor=cursor,
                                with_data=include == "data", search=search)
    body = page.wire()
    if include != "data":
        for job in body["jobs"]:
            job.pop("data", None)
    return _signed_list(svc, body)


def _instant(field: str, value: str | None) -> float | None:
    """A time query parameter: Unix seconds, or an ISO 8601 time (UTC unless it says); 422 else."""
    if value is None:
        return None
    try:
        return float(value) if value.replace(".", "", 1).isdigit() else _iso_seconds(value)
    except ValueError:
        raise InvalidPayload(f"{field}: not a time", errors=[{"field": field, "message": (
            "Unix seconds or an ISO 8601 time")}]) from None


def _iso_seconds(value: str) -> float:
    at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).timestamp()


@router.delete("/v1/jobs/{job_id}", response_model=JobView, tags=["jobs"],
               responses={202: {"model": JobView, "description": "A running job: it stops at its next step"}})
@errors.raises(JobNotFound, InvalidJobState)
async def cancel_job(job_id: str, who: Caller, svc: Svc, audit: Audit) -> Response:
    """Cancel: a waiting job is removed (200); a running one stops at its next step (202)."""
    owned = await _owned(job_id, who, svc)
    view = await svc.store.cancel(job_id)
    await audit("cancel", job_id, owner=owned.user_id, queue=owned.queue)
    return _signed(svc, view.wire(), 202 if view.status == "active" else 200)


@router.post("/v1/jobs/{job_id}/retry", response_model=JobView, tags=["jobs"])
@errors.raises(JobNotFound, InvalidJobState, RateLimited, QuotaExceeded)
async def retry_job(job_id: str, who: Caller, svc: Svc, audit: Audit) -> Response:
    """Run a failed or cancelled job again: a new run, so it counts against your submission
    rate and unfinished-job limits like a submit."""
    view = await _owned(job_id, who, svc)
    await svc.policy.budget_weight(view.user_id or who.user_id, None, who)  # a run again: within the budgets
    await svc.limiter.check(view.user_id or who.user_id)  # the store takes the rest, atomically
    again = await svc.store.retry(job_id, quota=svc.policy.quota(view.queue, None, who, retry=True))
    await audit("retry", job_id, owner=view.user_id, queue=view.queue)
    return _signed(svc, again.wire())


@router.post("/v1/jobs/{job_id}/move", response_model=JobView, tags=["jobs"])
@errors.raises(JobNotFound, InvalidJobState, Forbidden, InvalidPayload)
async def move_job(job_id: str, body: MoveRequest, who: Caller, svc: Svc, audit: Audit) -> Response:
    """Reorder a waiting job. `{"to": "front"}` puts one of yours first among your waiting
    jobs of its queue and priority; `{"before": id}` just before another of them. Your jobs
    trade places among themselves only: never ahead of another user's, whose places stay as
    they were. Admins: `{"to": "front"}` puts any job at the front of its whole queue (it runs
    next), `{"priority": 1-3}` moves it to the back of that priority."""
    owned = await _owned(job_id, who, svc)
    other: str | int | None = None
    if body.priority is not None:
        _admin(who)
        how, other = "priority", body.priority
    elif body.before is not None:
        how, other = "before", body.before
    else:
        how = "front" if who.admin else "own"
    moved = await svc.store.move(job_id, how, other)
    await audit("move", job_id, owner=owned.user_id, queue=owned.queue, how=how, other=other,
                power=how in ("front", "priority"))
    return _signed(svc, moved.wire())


async def _queue_view(name: str, svc: GatewayServices) -> QueueView:
    info = svc.queue_info(name)
    chosen, peaks = await svc.store.control.sizing(name)
    return QueueView(name=name, counts=await svc.store.counts(name), paused=await svc.store.is_paused(name),
                     concurrency=info["concurrency"], gpu_fraction=chosen or info["gpu_fraction"],
                     configured_gpu_fraction=info["gpu_fraction"],
                     memory_peaks={k: MemoryPeak(kind=kind, bytes=n) for k, (kind, n) in peaks.items()})


@router.get("/v1/queues", response_model=list[QueueView], tags=["queues"])
async def list_queues(who: Caller, svc: Svc) -> JSONResponse:
    """Each queue: jobs by state, concurrency per GPU node, GPU share per worker, paused."""
    return JSONResponse([(await _queue_view(q, svc)).wire() for q in svc.queues])


def _admin(who: Principal) -> None:
    if not who.admin:
        raise Forbidden("admin only")


@router.post("/v1/queues/{queue}/pause", response_model=QueueView, tags=["queues"])
@errors.raises(Forbidden, UnknownQueue)
async def pause_queue(queue: str, who: Caller, svc: Svc, audit: Audit) -> JSONResponse:
    """Stop starting this queue's jobs (admin)."""
    _admin(who)
    if queue not in svc.queues:
        raise UnknownQueue(queue)
    await svc.store.pause(queue)
    await audit("pause", queue)
    return JSONResponse((await _queue_view(queue, svc)).wire())


@router.post("/v1/queues/{queue}/resume", response_model=QueueView, tags=["queues"])
@errors.raises(Forbidden, UnknownQueue)
async def resume_queue(queue: str, who: Caller, svc: Svc, audit: Audit) -> JSONResponse:
    """Start this queue's jobs again (admin)."""
    _admin(who)
    if queue not in svc.queues:
        raise UnknownQueue(queue)
    await svc.store.resume(queue)
    await audit("resume", queue)
    return JSONResponse((await _queue_view(queue, svc)).wire())


@router.get("/v1/artifacts/{path:path}", tags=["artifacts"], response_class=Response)
@errors.raises(Unauthorized, JobNotFound)  # the caller is checked in the route (a signed link needs no token)
async def get_artifact(path: str, request: Request, svc: Svc) -> Response:
    """A result file of one of your jobs: with your token, or with the signed link (`exp`, `sig`)
    that job views and events carry, which needs no token (for `<img src>`)."""
    q = request.query_params
    signed = svc.signer.valid(f"/v1/artifacts/{path}", q.get("exp"), q.get("sig"))
    try:
        owner = svc.artifacts.check(path)[0]
    except InvalidArtifactPath:
        raise JobNotFound(path) from None
    if not signed and not caller_or_query(request).may_see(owner):
        raise JobNotFound(path)
    if not svc.artifacts.exists(path):
        raise JobNotFound(path)
    media = mimetypes.guess_type(path)[0] or "application/octet-stream"
    local = svc.artifacts.local_path(path)
    if svc.artifacts.fs.protocol in ("file", ("file", "local")) or "file" in svc.artifacts.fs.protocol:
        return FileResponse(local, media_type=media)

    def chunks() -> Any:
        with svc.artifacts.open(path) as f:
            while chunk := f.read(1 << 20):
                yield chunk

    return StreamingResponse(chunks(), media_type=media)




@router.post("/v1/uploads", status_code=201, tags=["uploads"])
@errors.raises(QuotaExceeded, InvalidPayload)
async def upload(request: Request, who: Caller, svc: Svc) -> JSONResponse:
    """Upload one image (the raw bytes as the body, any content type: it is sniffed); returns
    `upload://<id>`, which payloads take as `imageUrl` / `imageUrls` (yours only). At most
    DASH_MAX_IMAGE_BYTES and DASH_MAX_IMAGE_PIXELS; your uploads count against
    DASH_UPLOAD_QUOTA_BYTES."""
    s = svc.settings
    room = s.upload_quota_bytes - await svc.accounts.upload_bytes(who.user_id)
    data = bytearray()
    kind: str | None = None
    # The type and the quota are checked as the body arrives, not after: a refused upload is
    # not read to its end. (The quota is taken atomically below.)
    async for chunk in request.stream():  # the edge has cut the body off past its limit already
        data += chunk
        if len(data) > s.max_image_bytes:
            raise QuotaExceeded(f"an upload is at most {s.max_image_bytes} bytes (DASH_MAX_IMAGE_BYTES)")
        if len(data) > room:
            raise QuotaExceeded(f"upload quota of {s.upload_quota_bytes} bytes reached (DASH_UPLOAD_QUOTA_BYTES)")
        if kind is None and len(data) >= 16:
            kind = sniff_image(bytes(data[:16]))
            if kind is None:
                break
    body = bytes(data)  # one copy, read by the checks and written as is
    kind = kind or sniff_image(body[:16])
    if kind is None:
        raise InvalidPayload(f"not an image ({IMAGE_FORMATS_TEXT})", errors=[{"field": "body",
                                                                                 "message": "not an image"}])
    width, height = _pixels(body)
    if width * height > s.max_image_pixels:
        raise InvalidPayload(f"image too large: {width}x{height} is over {s.max_image_pixels} pixels",
                             errors=[{"field": "body", "message": "too many pixels"}])
    if not await svc.accounts.take_upload(who.user_id, len(body), s.upload_quota_bytes):
        raise QuotaExceeded(f"upload quota of {s.upload_quota_bytes} bytes reached (DASH_UPLOAD_QUOTA_BYTES)")
    upload_id = uuid.uuid4().hex
    ref = f"upload://{upload_id}"
    try:
        await asyncio.to_thread(svc.artifacts.put, upload_path(who.user_id, ref), body)
    except BaseException:
        await svc.accounts.give_upload(who.user_id, len(body))
        raise
    return JSONResponse({"id": upload_id, "url": ref, "contentType": kind, "bytes": len(body),
                         "width": width, "height": height}, status_code=201)


def _pixels(data: bytes) -> tuple[int, int]:
    """Width and height from the image's header (Pillow reads only the header here)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=list(PIL_FORMATS)) as img:
            return int(img.size[0]), int(img.size[1])
    except Exception:
        raise InvalidPayload("the image could not be read", errors=[{"field": "body", "message": "unreadable"}]) from None


@router.get("/v1/usage", response_model=UsageView, tags=["usage"],
            responses={200: {"content": {"text/csv": {}}, "description": "with `format=csv`: the GPU rows"}})
@errors.raises(Forbidden, InvalidPayload)
async def usage(
    who: Caller,
    svc: Svc,
    from_: Annotated[str | None, Query(alias="from", max_length=40)] = None,
    to: Annotated[str | None, Query(max_length=40)] = None,
    group_by: Annotated[Group, Query(alias="groupBy")] = "queue",
    user_id: Annotated[str | None, Query(alias="userId", max_length=128)] = None,
    fmt: Annotated[Literal["json", "csv"], Query(alias="format")] = "json",
) -> Response:
    """What you keep and hold, each against its limit: bytes your jobs keep in the queue's store,
    unfinished jobs, uploaded bytes, and the sockets and event streams you have open on this
    replica. A submit over a limit is refused (413 for bytes, 429 for the rest).

    `gpu`: the GPU time charged to you from `from` to `to` (Unix seconds or ISO 8601; default the
    last 24 hours; a range reads at most the last 31 days of it, by the hour), grouped by `groupBy` (queue, model,
    device, day, hour, user, none). Every attempt a worker ran is charged: its worker's GPU share x its seconds (a
    batch's pass split between its jobs); an attempt whose worker died under it is not. Admins may
    ask for another user (`userId`) or everyone (`userId=*`). `format=csv`: the rows as CSV."""
    s = svc.settings
    if user_id and user_id != who.user_id and not who.admin:
        raise Forbidden("only an admin may read another user's usage")
    target = user_id or who.user_id
    until = _instant("to", to) or time.time()
    since = _instant("from", from_)
    since = until - 24 * 3600 if since is None else since
    if since > until:
        raise bad_field("from", "must be before to")
    rows = await svc.store.ledger.read(None if target == "*" else [target], since, until, group_by)
    gpu = GpuUsage(user_id=target, from_=since, to=until, group_by=group_by, total=ledger_total(rows), rows=rows)
    if fmt == "csv":
        return _csv(gpu)
    view_of = who.user_id if target == "*" else target
    kept, unfinished = await svc.store.users.usage(view_of)
    uploads = await svc.accounts.upload_bytes(view_of)
    return JSONResponse(UsageView(
        user_id=view_of,
        gpu=gpu,
        budget=await _budget_view(svc, view_of),
        org=(org := job_org(view_of, who)),
        org_budget=await _budget_view(svc, org_id(org)) if org else None,
        bytes_kept=Allowance(used=kept, limit=s.max_bytes_per_user),
        jobs_unfinished=Allowance(used=unfinished, limit=s.max_waiting_per_user),
        upload_bytes=Allowance(used=uploads, limit=s.upload_quota_bytes),
        sockets=Allowance(used=svc.sockets.of(who.user_id), limit=svc.sockets.limit),
        streams=Allowance(used=svc.streams.of(who.user_id), limit=svc.streams.limit),
        submit_rate=s.rate_submit,
    ).wire())


async def _budget_view(svc: GatewayServices, user: str) -> BudgetView | None:
    budget = await svc.budgets.of(user)
    if budget.empty and budget.share is None:
        return None
    now = time.time()
    day, month = await svc.store.ledger.spent(user, now)
    return BudgetView(
        hard=budget.hard,
        gpu_share=None if budget.share is None else ShareUse(held=await svc.budgets.share_held(user),
                                                             limit=budget.share),
        gpu_seconds_per_day=None if budget.per_day is None else BudgetUse(
            used=round(day, 3), limit=budget.per_day, resets_at=resets_at("day", now)),
        gpu_seconds_per_month=None if budget.per_month is None else BudgetUse(
            used=round(month, 3), limit=budget.per_month, resets_at=resets_at("month", now)))


@router.get("/v1/budgets", tags=["usage"])
@errors.raises(Forbidden)
async def list_budgets(who: Caller, svc: Svc) -> JSONResponse:
    """Admins: the budgets set per user (and per group: `org:<group>`), and the defaults every
    other user and group has."""
    _admin(who)
    table = await svc.budgets.all()
    return JSONResponse({"default": svc.budgets.default.wire(), "orgDefault": svc.budgets.org_default.wire(),
                         "users": {u: b.wire() for u, b in sorted(table.items())}})


@router.put("/v1/budgets/{user_id}", response_model=BudgetView, tags=["usage"])
@errors.raises(Forbidden, InvalidPayload)
async def set_budget(user_id: str, body: BudgetRequest, who: Caller, svc: Svc, audit: Audit) -> JSONResponse:
    """Admins: set a user's GPU budget (GPU seconds per UTC day / month; `hard` refuses their
    submits past it until it resets, soft lowers their fair share; `gpuShare`: the GPUs their
    running jobs may hold at once, a job past it waits for one of theirs to end), or a group's (`org:<group>`:
    the members its tokens' `org` claim names, their GPU time together). Answers it with its use."""
    _admin(who)
    _user_id(user_id)
    await svc.budgets.set(user_id, Budget(body.gpu_seconds_per_day, body.gpu_seconds_per_month, body.hard,
                                          body.gpu_share))
    await audit("budget.set", user_id, owner=user_id, power=True, **body.wire())
    return JSONResponse(((await _budget_view(svc, user_id)) or BudgetView(hard=body.hard)).wire())


@router.delete("/v1/budgets/{user_id}", tags=["usage"])
@errors.raises(Forbidden)
async def delete_budget(user_id: str, who: Caller, svc: Svc, audit: Audit) -> JSONResponse:
    """Admins: remove a user's (or `org:<group>`'s) own budget (the default holds for them again)."""
    _admin(who)
    _user_id(user_id)
    now = await svc.budgets.set(user_id, None)
    await audit("budget.set", user_id, owner=user_id, power=True, removed=True)
    return JSONResponse({"default": now.wire()})


def _user_id(user_id: str) -> None:
    """A budget's owner: a user id, or `org:<group>` (a token's `org`)."""
    if not is_user_id(user_id.removeprefix(ORG)):
        raise bad_field("userId", "not a user id (nor org:<group>)")


def _csv(gpu: GpuUsage) -> Response:
    """The GPU rows as CSV: the group's column, then the metrics."""
    out = io.StringIO()
    head = ([gpu.group_by] if gpu.group_by != "none" else []) + list(LEDGER_METRICS)
    w = csv.writer(out)
    w.writerow(head)
    for row in gpu.rows:
        w.writerow([row.get(c, "") for c in head])
    name = f"usage-{gpu.user_id.replace('*', 'all')}-{int(gpu.from_)}-{int(gpu.to)}.csv"
    return Response(out.getvalue(), media_type="text/csv",
                    headers={"content-disposition": f'attachment; filename="{name}"'})


@router.get("/v1/audit", tags=["ops"])
@errors.raises(Forbidden)
async def audit_log(
    who: Caller,
    svc: Svc,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=40, pattern=r"^\d{1,20}-\d{1,20}$")] = None,
    action: Annotated[str | None, Query(max_length=40)] = None,
    by: Annotated[str | None, Query(max_length=128)] = None,
) -> JSONResponse:
    """Admins: the audit trail, newest first: every admin action (pause, resume, moving a job
    to the front of its queue or to another priority, tokens issued by `dash-ray token`) and
    every action on another user's job or schedule (cancel, retry, move, schedule removal), each
    with who, what, the target and whose it is, when and from which address. Filter by `action`
    or actor (`by`); pass `nextCursor` back as `cursor` for older entries."""
    _admin(who)
    entries, nxt = await svc.audit.read(limit, cursor, action=action, who=by)
    return JSONResponse({"entries": [e.wire() for e in entries], "nextCursor": nxt})


@router.post("/v1/ws-ticket", tags=["auth"])
async def ws_ticket(who: Caller, svc: Svc) -> JSONResponse:
    """A one-use ticket for the WebSocket (`/ws?ticket=...`), valid a few seconds: a browser
    opens its socket without putting its token in a URL."""
    return JSONResponse({"ticket": await svc.issue_ticket(who), "expiresIn": svc.settings.ws_ticket_ttl_s})


class Health(WireModel):
    """This replica's health: `ok` (with the version), or `unavailable` and why."""

    status: str
    version: str | None = None
    error: str | None = None


# Its 503 is not an error body: a load balancer reads it (the route's own declaration wins).
@router.get("/healthz", tags=["ops"], response_model=Health,
            responses={503: {"model": Health, "description": "Redis or the event feed is not reachable now"}})
async def healthz(svc: Svc) -> JSONResponse:
    """200 when this replica can serve: Redis answers within 2 s and its event feed is connected;
    503 otherwise (a load balancer sends clients elsewhere; the replica recovers by itself)."""
    try:
        await asyncio.wait_for(svc.accounts.ping(), 2.0)
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "error": type(exc).__name__ or "timeout"}, status_code=503)
    if not svc.hub.connected:
        return JSONResponse({"status": "unavailable", "error": "event feed reconnecting"}, status_code=503)
    return JSONResponse({"status": "ok", "version": __version__})


@router.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
@errors.raises(Unauthorized)
async def metrics(request: Request, svc: Svc) -> PlainTextResponse:
    """Prometheus text: queue depth, jobs by state, job durations, events sent, open sockets.
    With DASH_METRICS_TOKEN set, only for `Authorization: Bearer <that token>`."""
    want = svc.settings.metrics_token
    if want and not hmac.compare_digest(bearer(request.headers.get("authorization")) or "", want):
        raise Unauthorized("metrics need the metrics token (DASH_METRICS_TOKEN)")
    counts = {q: await svc.store.counts(q) for q in svc.queues}
    durations = {q: await svc.store.control.durations(q) for q in svc.queues}
    sizing = {}
    for q in svc.queues:
        chosen, peaks = await svc.store.control.sizing(q)
        sizing[q] = (chosen or svc.queue_info(q)["gpu_fraction"], peaks)
    # user ids are personal data: listed only where /metrics wants its token
    page = render(counts, durations, svc.metrics, sizing, open_streams=svc.streams.total,
                  bytes_kept=await svc.store.users.top_usage(20) if want else None,
                  cold=await svc.store.control.cold_starts(list(svc.queues)),
                  min_workers={q: svc.settings.queue(q).min_workers for q in svc.queues},
                  gpu_users=await svc.store.ledger.top_users(list(svc.queues), svc.settings.metrics_users)
                  if want and svc.settings.metrics_users > 0 else None)
    return PlainTextResponse(page, media_type="text/plain; version=0.0.4")


STATIC = Path(__file__).parent / "static"
# The page runs only its own scripts and talks only to this origin.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; connect-src 'self' ws: wss:; "
                               "style-src 'self'; script-src 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

_TOO_LARGE = json.dumps(errors.error_body(BodyTooLarge()), separators=(",", ":")).encode()


class _Edge:
    """ASGI middleware at the edge of every HTTP request:

    - a request with a body to the API (`POST`/`PUT`/`PATCH /v1/...`) is authenticated before
      its body is read: no valid bearer token, 401 at once;
    - bodies are counted as they arrive, whatever the framing (`Content-Length` or chunked), and
      cut off with 413 past `limit` bytes;
    - responses are tagged with the replica that served them; requests are counted per route;
    - a submit (`POST /v1/jobs/<queue>` with a JSON body) is served here, by the same handler as
      its FastAPI route, with its body validated once in pydantic's JSON parser and its errors
      answered as the app answers them: the hottest route skips the router, the dependency
      solver and four middlewares (half the gateway's CPU per submit).
    """

    def __init__(self, app: Any, limit: int, services: GatewayServices,
                 submits: dict[str, tuple[type[BaseModel], SubmitHandler]] | None = None) -> None:
        self.app = app
        self.submits = submits or {}
        self.json_limit = limit
        self.upload_limit = max(limit, services.settings.max_image_bytes)  # POST /v1/uploads: one image
        self.services = services
        self.replica = services.metrics.replica.encode()

    async def _reply(self, send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"x-dash-replica", self.replica),
                                *(extra or [])]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorization = b""
        content_type: bytes | None = None
        prefer: str | None = None
        limit = self.upload_limit if scope.get("path") == "/v1/uploads" else self.json_limit
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await self._reply(send, 413, _TOO_LARGE)
                return
            if name == b"authorization":
                authorization = value
            elif name == b"content-type":
                content_type = value
            elif name == b"prefer":
                prefer = value.decode("latin-1")
        if scope.get("method") in errors.EDGE_AUTH_METHODS and scope.get("path", "").startswith("/v1/"):
            try:
                who = self.services.auth.verify(bearer(authorization))
            except Unauthorized as exc:
                await self._reply(send, 401, json.dumps(errors.error_body(exc)).encode(),
                                  [(b"www-authenticate", b"Bearer")])
                return
            scope.setdefault("state", {})["principal"] = who  # the route's auth reuses it
        received = 0
        answered = False

        async def counted() -> Any:
            nonlocal received, answered
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit and not answered:
                    answered = True
                    await self._reply(send, 413, _TOO_LARGE)
                    return {"type": "http.disconnect"}  # the app stops reading; its answer is dropped
            return message

        async def tagged(message: Any) -> None:
            if answered:
                return
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-dash-replica", self.replica)]
            await send(message)

        fast = self.submits.get(scope.get("path", "")) if scope.get("method") == "POST" else None
        if fast is not None and _json_body(content_type):
            await self._submit(fast, scope, counted, tagged, prefer)
            key = f"POST {scope['path']}"
        else:
            await self.app(scope, counted, tagged)
            route = scope.get("route")
            key = f"{scope.get('method', '')} {getattr(route, 'path', 'unmatched')}"
        counts = self.services.metrics.requests
        counts[key] = counts.get(key, 0) + 1


    async def _submit(self, fast: tuple[type[BaseModel], SubmitHandler], scope: Any, receive: Any, send: Any,
                      prefer: str | None) -> None:
        """A submit, as its FastAPI route answers it (the caller was authenticated above)."""
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left, or the body went over the limit (answered 413)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        model, handler = fast
        response: Response
        body: Any = None
        try:
            body = model.model_validate_json(raw) if raw.strip() else None
        except ValidationError as exc:  # the request's fault; one raised further on is ours (500)
            response = errors.invalid_response(exc.errors(include_url=False, include_context=False))
        else:
            if body is None:
                response = errors.invalid_response([{"loc": ("body",), "msg": "Field required"}])
            else:
                try:
                    response = await handler(body, scope["state"]["principal"], self.services, prefer)
                except DashError as exc:
                    response = errors.dash_response(exc)
                except Exception as exc:
                    response = errors.unexpected_response("POST", scope["path"], exc)
        await response(scope, receive, send)


def _json_body(content_type: bytes | None) -> bool:
    """True for a request body FastAPI reads as JSON: no Content-Type, or a JSON one."""
    if content_type is None:
        return True
    main = content_type.split(b";", 1)[0].strip().lower()
    return main == b"application/json" or (main.startswith(b"application/") and main.endswith(b"+json"))


def create_app(services: GatewayServices, *, max_body_bytes: int | None = None) -> FastAPI:
    """The gateway app; its lifespan starts and closes `services`."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await services.start()
        runtime.tune_gc_for_serving()
        try:
            yield
        finally:
            await services.close()

    app = FastAPI(
        title="dash-ray",
        version=__version__,
        description="GPU job scheduler for AI image services: training, upscaling and generation queues "
                    "with live progress over WebSocket at `/ws`.",
        lifespan=lifespan,
    )
    app.state.services = services
    runtime.hide_credentials_in_access_logs()
    errors.install(app)
    submits, fast = _submit_routes(services.queues)
    app.include_router(submits)  # before `router`, whose /v1/jobs/{queue} answers the rest
    app.include_router(router)
    app.include_router(streams_router)
    app.include_router(schedules_router)
    app.include_router(flows_router)

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await serve_socket(websocket, services)

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        """The dashboard (static files in the package; the token stays in the browser)."""
        return FileResponse(STATIC / "index.html", headers=_PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    limit = max_body_bytes if max_body_bytes is not None else services.settings.max_body_bytes
    app.add_middleware(_Edge, limit=limit, services=services, submits=fast)
    return app
