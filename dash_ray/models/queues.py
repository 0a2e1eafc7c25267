"""The queue registry: names and their payload models."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from dash_ray.errors import InvalidPayload, UnknownQueue
from dash_ray.models.options import JobOptions
from dash_ray.models.payloads import GenerationJob, JobPayload, SleepJob, TrainingJob, UpscalingJob

__all__ = ["PAYLOADS", "QUEUES", "parse_options", "parse_payload", "validation_errors"]

QUEUES: tuple[str, ...] = ("training", "upscaling", "generation")
PAYLOADS: dict[str, type[JobPayload]] = {
    "training": TrainingJob,
    "upscaling": UpscalingJob,
    "generation": GenerationJob,
    "sleep": SleepJob,
}


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


def payload_model(queue: str, allow_sleep: bool = False) -> type[JobPayload]:
    """The payload model of a queue, or UnknownQueue."""
    model = PAYLOADS.get(queue)
    if model is None or (queue == "sleep" and not allow_sleep):
        raise UnknownQueue(queue)
    return model


def parse_payload(queue: str, data: Any, allow_sleep: bool = False) -> JobPayload:
    """Validate a payload for a queue; raises UnknownQueue or InvalidPayload naming each field."""
    model = payload_model(queue, allow_sleep)
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
