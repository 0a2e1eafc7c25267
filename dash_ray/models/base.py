"""Base classes for wire models: snake_case in Python, camelCase on the wire."""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeGuard

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

__all__ = [
    "BULLMQ_RESERVED",
    "USER_ID_PATTERN",
    "JobId",
    "LookupId",
    "RequestModel",
    "UserId",
    "WireModel",
    "is_lookup_id",
    "is_user_id",
]


class WireModel(BaseModel):
    """Something we send: camelCase aliases, unknown fields ignored (forward compatible)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def wire(self, **kwargs: Any) -> dict[str, Any]:
        """The model as a camelCase JSON-able dict."""
        return self.model_dump(mode="json", by_alias=True, **kwargs)


class RequestModel(WireModel):
    """Something a caller sends us: unknown fields are an error naming the field."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", str_strip_whitespace=True
    )


_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
# The one rule for a user id, wherever one comes from: a token's subject, a payload's `userId`,
# a plain BullMQ job's `userId` when it is adopted. (It is also a path segment of artifacts.)
USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,127}$"
_USER = re.compile(USER_ID_PATTERN)


def is_user_id(value: object) -> TypeGuard[str]:
    """True if `value` is a user id: 1-128 letters, digits, '_', '.', '@' or '-', starting with a
    letter or digit."""
    return isinstance(value, str) and _USER.fullmatch(value) is not None


def _job_id(value: str) -> str:
    if not _ID.fullmatch(value):
        raise ValueError("must be 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit")
    if value.isdigit():
        raise ValueError("must not be all digits (BullMQ keeps numeric ids for its own counter)")
    if value in BULLMQ_RESERVED:
        raise ValueError(f"{value!r} is reserved by BullMQ")
    return value


# Key suffixes BullMQ uses next to job ids: an id equal to one would name a queue structure.
BULLMQ_RESERVED = frozenset({
    "wait", "active", "paused", "completed", "failed", "delayed", "prioritized", "meta", "id",
    "events", "stalled", "stalled-check", "limiter", "marker", "pc", "repeat", "de", "metrics",
    "waiting-children", "priority",
})


# The id BullMQ gives a job a job scheduler makes: `repeat:{scheduler id}:{its time, ms}` (the only
# shape with ':' that names a job: others would name a key beside a job's, e.g. its lock or logs).
_SCHEDULED_ID = re.compile(r"^repeat:[A-Za-z0-9][A-Za-z0-9_.@\-]{0,150}:\d{1,16}$")


def is_lookup_id(value: str) -> bool:
    """True if `value` can name an existing job (ours, BullMQ's numeric ids, a job scheduler's)."""
    return (bool(_ID.fullmatch(value)) and value not in BULLMQ_RESERVED) or bool(_SCHEDULED_ID.fullmatch(value))


def _lookup_id(value: str) -> str:
    if not is_lookup_id(value):
        raise ValueError("not a job id")
    return value


def _user_id(value: str) -> str:
    if not is_user_id(value):
        raise ValueError("must be 1-128 letters, digits, '_', '.', '@' or '-'")
    return value


JobId = Annotated[str, AfterValidator(_job_id), Field(min_length=1, max_length=128)]
LookupId = Annotated[str, AfterValidator(_lookup_id), Field(min_length=1, max_length=200)]
UserId = Annotated[str, AfterValidator(_user_id), Field(min_length=1, max_length=128)]
