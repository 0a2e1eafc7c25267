"""The queue table: every queue's name, payload model, runner and default limits, defined once.

A queue is one row of `QUEUE_TABLE`. Settings (`DASH_<QUEUE>_CONCURRENCY`, ...), the gateway's
routes, the job store and the scheduler all read it; nothing else names the queues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from dash_ray.errors import InvalidPayload, UnknownQueue
from dash_ray.models.options import JobOptions
from dash_ray.models.payloads import GenerationJob, JobPayload, SleepJob, TrainingJob, UpscalingJob

__all__ = [
    "QUEUES",
    "QUEUE_TABLE",
    "QueueDef",
    "parse_options",
    "parse_payload",
    "payload_model",
    "queue_def",
    "validation_errors",
]


@dataclass(frozen=True)
class QueueDef:
    """One queue: its payload model, its runner (`module:Class`, imported only by a worker) and
    its default limits (worker slots per GPU node, GPU share of one worker, run-time limit)."""

    name: str
    title: str
    payload: type[JobPayload]
    runner: str
    concurrency: int
    gpu_fraction: float
    timeout_s: float  # an attempt running longer is stopped (its worker killed) and retried
    test_only: bool = False  # served only with DASH_ENABLE_SLEEP_QUEUE (tests, benchmarks)


QUEUE_TABLE: dict[str, QueueDef] = {q.name: q for q in (
    QueueDef("training", "LoRA training", TrainingJob, "dash_ray.workers.training:TrainingRunner",
             1, 1.0, timeout_s=6 * 3600),
    QueueDef("upscaling", "image upscaling", UpscalingJob, "dash_ray.workers.upscaling:UpscalingRunner",
             3, 0.33, timeout_s=600),
    QueueDef("generation", "image generation", GenerationJob, "dash_ray.workers.generation:GenerationRunner",
             5, 0.2, timeout_s=600),
    QueueDef("sleep", "sleep (tests and benchmarks)", SleepJob, "dash_ray.scheduler.sleep:SleepRunner",
             5, 0.2, timeout_s=600, test_only=True),
)}

# The queues a deployment serves (the test-only ones are added by a setting).
QUEUES: tuple[str, ...] = tuple(q.name for q in QUEUE_TABLE.values() if not q.test_only)


def queue_def(name: str) -> QueueDef:
    """The table row of a queue, or UnknownQueue."""
    q = QUEUE_TABLE.get(name)
    if q is None:
        raise UnknownQueue(name)
    return q


def validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic errors as `[{field, message}]`, fields in camelCase dotted form."""
    out = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err.get("loc", ()))
        out.append({"field": field or "(body)", "message": err.get("msg", "invalid")})
    return out


def _invalid(prefix: str, exc: ValidationError) -> InvalidPayload:
    errors = validation_errors(exc)
    text = "; ".join(f"{prefix}{e['field']}: {e['message']}" for e in errors)
    return InvalidPayload(f"invalid payload: {text}", errors=errors)


def payload_model(queue: str, allow_test_only: bool = False) -> type[JobPayload]:
    """The payload model of a queue, or UnknownQueue."""
    q = QUEUE_TABLE.get(queue)
    if q is None or (q.test_only and not allow_test_only):
        raise UnknownQueue(queue)
    return q.payload


def parse_payload(queue: str, data: Any, allow_test_only: bool = False) -> JobPayload:
    """Validate a payload for a queue; raises UnknownQueue or InvalidPayload naming each field."""
    model = payload_model(queue, allow_test_only)
    if not isinstance(data, dict):
        raise InvalidPayload("invalid payload: the body must be a JSON object", errors=[{"field": "(body)", "message": "must be an object"}])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _invalid("", exc) from None


def parse_options(data: Any) -> JobOptions:
    """Validate job options; raises InvalidPayload naming each field."""
    if data is None:
        return JobOptions()
    if isinstance(data, JobOptions):
        return data
    try:
        return JobOptions.model_validate(data)
    except ValidationError as exc:
        raise _invalid("options.", exc) from None
