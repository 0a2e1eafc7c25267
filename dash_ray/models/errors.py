"""The error body every REST error answers with, `{"error": {"code", "message", ...}}`, as a model:
what `DashError.to_dict()` writes, declared in OpenAPI for each status a route can answer."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from dash_ray.models.base import WireModel

__all__ = ["ErrorBody", "ErrorDetail", "FieldError"]


class FieldError(WireModel):
    """One field a request got wrong, and why."""

    model_config = ConfigDict(extra="allow")

    field: str = Field(description="The field, camelCase and dotted (`options.webhook.url`), or `(body)`.")
    message: str


class ErrorDetail(WireModel):
    """An error: a stable machine-readable `code`, a message for people, and the error's data
    (which of the optional fields are present depends on the code)."""

    # An error may carry data of its own beyond these (forward compatible).
    model_config = ConfigDict(extra="allow")

    code: str = Field(description="Stable: `invalid_payload`, `unknown_queue`, `not_found`, `conflict`, "
                                  "`invalid_state`, `unauthorized`, `forbidden`, `rate_limited`, "
                                  "`quota_exceeded`, `too_large`, `unavailable`, `internal`, ...")
    message: str
    errors: list[FieldError] | None = Field(None, description="`invalid_payload`: each field and why.")
    field: str | None = Field(None, description="`forbidden`: the field that was refused, when one was.")
    job_id: str | None = Field(None, description="The job the error is about.")
    queue: str | None = Field(None, description="`unknown_queue`: the queue named.")
    state: str | None = Field(None, description="`invalid_state`: the job's state.")
    retry_after_s: int | None = Field(None, description="`rate_limited`, `unavailable`: seconds to wait "
                                                         "(also the `Retry-After` header).")


class ErrorBody(WireModel):
    """The body of every REST error."""

    error: ErrorDetail
