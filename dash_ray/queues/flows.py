"""Flows: a tree of jobs made in one step, on BullMQ's flow layout. A job with children is added
with BullMQ's `addParentJob` (it waits in `waiting-children`); each child names its parent
(`opts.parent`) and what its failure does to it (`failParentOnFailure`, or
`ignoreDependencyOnFailure`). BullMQ's own completion of the last child moves the parent to
wait; its failure of a `fail` child fails the parent (`QueueConsumer` ends the parent's record
too). Every job of the tree gets our record, history entry and first event from CREATE, all in
one MULTI/EXEC: a tree is made whole or (refused by a limit, an id taken) not at all.

A parent's payload may take a child's image as `job://<id>/images/<n>`: resolved when it is
handed to its worker (`QueueConsumer.resolve_inputs`)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from bullmq import Job as BullJob

from dash_ray.errors import DashError, InvalidPayload, JobConflict
from dash_ray.models.events import JobFailedEvent, JobProgressEvent
from dash_ray.models.options import FlowRequest, JobOptions
from dash_ray.models.payloads import JobPayload
from dash_ray.models.queues import parse_options, parse_payload
from dash_ray.models.status import JobStatus, Status
from dash_ray.models.views import FlowView, JobView
from dash_ray.queues.lifecycle import BullAdd, BullAddRecorder, Created, Quota
from dash_ray.queues.producer import Producer, bull_opts, digest, identify, refusal

__all__ = ["MAX_FLOW_DEPTH", "MAX_FLOW_JOBS", "FlowNode", "descendants", "flatten", "make_flow"]

MAX_FLOW_JOBS = 20
MAX_FLOW_DEPTH = 4


@dataclass
class FlowNode:
    """One job of a flow, checked: where it sits (`parent`: its parent's index in the flow's
    pre-order list), its payload and options (with its id)."""

    request: FlowRequest
    parent: int | None
    payload: JobPayload
    options: JobOptions
    job_id: str


def flatten(tree: FlowRequest, owner: str) -> list[FlowNode]:
    """The flow's jobs in pre-order (a parent before its children), each payload and options
    parsed and its id chosen (the payload's, `options.jobId`, or a new one); InvalidPayload for
    a flow too big or too deep, an id given twice, or options a flow's jobs cannot have."""
    out: list[FlowNode] = []

    def walk(node: FlowRequest, parent: int | None, depth: int) -> None:
        if depth > MAX_FLOW_DEPTH:
            raise InvalidPayload(f"invalid payload: a flow is at most {MAX_FLOW_DEPTH} levels deep",
                                 errors=[{"field": "children", "message": "too deep"}])
        if len(out) >= MAX_FLOW_JOBS:  # before any more is parsed
            raise InvalidPayload(f"invalid payload: a flow is at most {MAX_FLOW_JOBS} jobs",
                                 errors=[{"field": "children", "message": "too many jobs"}])
        payload = parse_payload(node.queue, node.payload, allow_test_only=True)
        options = parse_options(node.options)
        if options.cache:
            raise InvalidPayload("invalid payload: options.cache: not for a flow's jobs",
                                 errors=[{"field": "options.cache", "message": "not in a flow"}])
        if options.start_by is not None:  # (its expiry would take the others out of BullMQ with it)
            raise InvalidPayload("invalid payload: options.startBy: not for a flow's jobs",
                                 errors=[{"field": "options.startBy", "message": "not in a flow"}])
        if options.after:  # (a flow's jobs wait for those the flow makes: its children)
            raise InvalidPayload("invalid payload: options.after: not for a flow's jobs (give them as children)",
                                 errors=[{"field": "options.after", "message": "not in a flow"}])
        if node.children and options.delay_s:
            raise InvalidPayload("invalid payload: options.delayS: a job with children waits for them, not a delay",
                                 errors=[{"field": "options.delayS", "message": "not with children"}])
        if not payload.get_id() and not options.job_id:
            options = options.model_copy(update={"job_id": uuid.uuid4().hex})
        job_id, _owner, _chosen = identify(payload, options, owner)
        out.append(FlowNode(node, parent, payload.with_ids(job_id, owner), options, job_id))
        me = len(out) - 1
        for child in node.children:
            walk(child, me, depth + 1)

    walk(tree, None, 1)
    if len(out) > MAX_FLOW_JOBS:
        raise InvalidPayload(f"invalid payload: a flow is at most {MAX_FLOW_JOBS} jobs",
                             errors=[{"field": "children", "message": "too many jobs"}])
    ids = [n.job_id for n in out]
    if len(set(ids)) != len(ids):
        raise InvalidPayload("invalid payload: a flow names one id twice",
                             errors=[{"field": "jobId", "message": "ids must differ"}])
    return out


def descendants(nodes: list[FlowNode], i: int) -> set[str]:
    """The ids of the jobs node `i` waits for, at any depth."""
    out: set[str] = set()
    for j, n in enumerate(nodes):
        k: int | None = n.parent
        while k is not None:
            if k == i:
                out.add(nodes[j].job_id)
                break
            k = nodes[k].parent
    return out


async def make_flow(producer: Producer, nodes: list[FlowNode], owner: str, *, weight: float | None = None,
                    quotas: list[Quota] | None = None, org: str | None = None) -> FlowView:
    """Make a flow's jobs (`flatten`'s list) in one MULTI/EXEC; JobConflict when an id is taken
    (nothing made), the refusal of a limit (what was made in the same step is taken back)."""
    o = producer.options
    pipe = producer.redis.pipeline(transaction=False)
    for n in nodes:
        pipe.exists(producer.keys.job(n.job_id), producer.keys.bull(n.request.queue, n.job_id))
    held = await pipe.execute()
    if any(held):
        if all(held) and (same := await _made_before(producer, nodes, owner)) is not None:
            await producer.lifecycle.durability.check(producer.redis, producer.keys, "the flow")
            return same  # the same flow sent again (its answer lost): what it made
        taken = next(n for n, h in zip(nodes, held, strict=True) if h)
        raise JobConflict(taken.job_id, "this id is taken; a flow's ids must be new")
    now_ms = int(time.time() * 1000)
    items: list[tuple[JobProgressEvent, BullAdd, dict[str, Any]]] = []
    views: list[JobView] = []
    for k, n in enumerate(nodes):
        quota = quotas[k] if quotas else None
        bq = producer.control.queue(n.request.queue)
        if o.validate:
            o.validate(n.payload)
        wire = n.payload.wire(exclude_none=True)
        dig, size = digest(wire)
        attempts = n.options.attempts or o.default_attempts
        start_by = None  # no deadline to start in a flow, the queue's default neither (see flatten)
        opts = bull_opts(n.job_id, n.options, attempts, o.keep_completed, o.keep_failed, o.finished_ttl_s, start_by)
        if org:  # the group its GPU time and share count against too
            opts["org"] = org
        if n.parent is not None:
            parent = nodes[n.parent]
            opts["parent"] = {"id": parent.job_id, "queue": producer.control.queue(parent.request.queue).qualifiedName}
            opts["failParentOnFailure" if n.request.on_failure == "fail" else "ignoreDependencyOnFailure"] = True
        bjob = BullJob(bq, n.request.queue, wire, opts)
        recorder = BullAddRecorder(bq.scripts.commands)
        children = sum(1 for m in nodes if m.parent is not None and nodes[m.parent] is n)
        status: JobStatus
        if children:
            await bq.scripts.addParentJob(bjob, recorder)
            status, message = "waiting", f"waiting for {children} job{'s' if children > 1 else ''} first"
        else:
            await bq.scripts.addJob(bjob, recorder)
            status = "delayed" if n.options.delay_s else "waiting"
            message = f"delayed {n.options.delay_s:g}s" if n.options.delay_s else "waiting"
        assert recorder.call is not None
        event = JobProgressEvent(job_id=n.job_id, queue=n.request.queue, user_id=owner, status=status, progress=0,
                                 message=message)
        hook = (n.options.webhook.url, [str(e) for e in n.options.webhook.events]) if n.options.webhook else None
        items.append((event, recorder.call, {
            "digest": dig, "created_ms": now_ms, "position": not children and not n.options.delay_s, "hook": hook,
            "fair": o.fair(n.options.priority, owner, weight), "quota": quota, "size": size,
            "start_by": "" if start_by is None else str(start_by), "half_life_s": o.fair_half_life_s}))
        views.append(JobView.model_construct(
            id=n.job_id, queue=n.request.queue, user_id=owner, status=status, message=message, data=wire,
            attempts=attempts, priority=n.options.priority, created_at=now_ms / 1000))
    made = await producer.lifecycle.create_many(items)
    failure: DashError | Exception | None = None
    for k, (n, m) in enumerate(zip(nodes, made, strict=True)):
        if isinstance(m, Exception):
            failure = failure or m
        elif m.refused:
            rate = quotas[k].rate if quotas else None
            failure = failure or refusal(*m.refused, rate=rate)
        elif not m.created:
            failure = failure or JobConflict(n.job_id, "this id is taken; a flow's ids must be new")
    if failure is not None:
        await _take_back(producer, nodes, made, str(failure))
        raise failure
    for view, m in zip(views, made, strict=True):
        assert isinstance(m, Created)
        view.seq, view.queue_position = m.seq, m.position
    return _tree(nodes, views, 0)


async def _made_before(producer: Producer, nodes: list[FlowNode], owner: str) -> FlowView | None:
    """The flow an earlier request made, if every job of this one is a job of the owner's with
    the same queue and payload (`FlowView.created` False); else None."""
    pipe = producer.redis.pipeline(transaction=False)
    for n in nodes:
        pipe.hmget(producer.keys.job(n.job_id), "queue", "digest", "userId")
    for n, found in zip(nodes, await pipe.execute(), strict=True):
        if list(found) != [n.request.queue, digest(n.payload.wire(exclude_none=True))[0], owner]:
            return None
    views = [await producer.reader.get(n.job_id) for n in nodes]
    tree = _tree(nodes, views, 0)
    tree.created = False
    return tree


async def _take_back(producer: Producer, nodes: list[FlowNode], made: list[Created | Exception], why: str) -> None:
    """Undo a flow made in part: its jobs out of BullMQ (the first made, with its children),
    their records ended `cancelled`; one a worker took meanwhile is told to stop instead (its
    record ends when it does)."""
    mine = [n for n, m in zip(nodes, made, strict=True) if isinstance(m, Created) and m.created]
    if mine:
        await producer.control.queue(mine[0].request.queue).backend.remove(mine[0].job_id, True)
    for n in reversed(mine):
        if await producer.redis.exists(producer.keys.bull(n.request.queue, n.job_id)):
            await producer.lifecycle.cancel(n.job_id)
            continue
        await producer.lifecycle.finish(JobFailedEvent(
            job_id=n.job_id, queue=n.request.queue, user_id=n.payload.user_id, status=Status.CANCELLED.value,
            error=f"cancelled: its flow could not be made ({why})"))


def _tree(nodes: list[FlowNode], views: list[JobView], i: int) -> FlowView:
    return FlowView(job=views[i], children=[_tree(nodes, views, j) for j, n in enumerate(nodes) if n.parent == i])
