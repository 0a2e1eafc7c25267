"""Job payloads of the built-in queues, exactly the seed's fields, with typed settings and limits.

A payload model is one of the three things a queue is made of (with its runner and its row in
models/queues.py); `ImageUrl` is the type of a field holding an image reference."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field

from dash_ray.models.base import JobId, RequestModel, UserId
from dash_ray.models.images import IMAGE_URL_SCHEMES, artifact_ref, job_ref

__all__ = [
    "MAX_IMAGE_URL_CHARS",
    "GenerationJob",
    "GenerationSettings",
    "ImageUrl",
    "JobPayload",
    "ModelName",
    "SleepJob",
    "TrainingJob",
    "TrainingSettings",
    "UpscalingJob",
    "upload_path",
]

_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,199}$")
# data: URLs carry the image itself; the gateway caps the whole body too.
MAX_IMAGE_URL_CHARS = 32 * 1024 * 1024


def _model_name(value: str) -> str:
    if not _MODEL.match(value):
        raise ValueError("must be a model name: letters, digits, '_', '.', '-', '/' (1-200)")
    return value


def _multiple_of_8(value: int) -> int:
    if value % 8:
        raise ValueError("must be a multiple of 8")
    return value


_UPLOAD = re.compile(r"^upload://[0-9a-f]{32}$")


def _image_url(value: str) -> str:
    scheme = value.split(":", 1)[0].lower() if ":" in value else ""
    if scheme not in IMAGE_URL_SCHEMES:
        raise ValueError("must be an upload://, job://, http(s), file:// or data: URL")
    if scheme == "upload" and not _UPLOAD.match(value):
        raise ValueError("an upload reference is upload://<id> (as POST /v1/uploads returns it)")
    if scheme == "job" and job_ref(value) is None:
        raise ValueError("a job's image is job://<job id>/images/<n>")
    if scheme == "artifact" and artifact_ref(value) is None:
        raise ValueError("not a result file reference")
    return value


def upload_path(user_id: str, ref: str) -> str:
    """Artifact path of an upload reference (`upload://<id>`) of a user: scoped to its owner."""
    return f"{user_id}/uploads/{ref.removeprefix('upload://')}"


ModelName = Annotated[str, AfterValidator(_model_name)]
Pixels = Annotated[int, Field(ge=64, le=2048), AfterValidator(_multiple_of_8)]
ImageUrl = Annotated[str, Field(min_length=8, max_length=MAX_IMAGE_URL_CHARS), AfterValidator(_image_url)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


class GenerationSettings(RequestModel):
    """How to generate: model, steps, guidance, size, seed, images, optional LoRA."""

    model: ModelName | None = None
    negative_prompt: str = Field("", max_length=2000)
    steps: int = Field(30, ge=1, le=150)
    guidance_scale: float = Field(7.5, ge=0, le=30)
    width: Pixels = 512
    height: Pixels = 512
    seed: Seed | None = None
    num_images: int = Field(1, ge=1, le=8)
    lora_id: JobId | None = None
    lora_weight: float = Field(1.0, ge=0, le=2)
    # A `job:preview` every N steps (default: about every 10% of the steps; 0: none), at most 2 a second.
    preview_every: int | None = Field(None, ge=0, le=150)


class TrainingSettings(RequestModel):
    """How to train a LoRA: base model, epochs, learning rate, rank, resolution, batch size, seed."""

    base_model: ModelName | None = None
    epochs: int = Field(10, ge=1, le=1000)
    learning_rate: float = Field(1e-4, gt=0, le=1e-1)
    rank: int = Field(8, ge=1, le=256)
    resolution: Annotated[int, Field(ge=64, le=1024), AfterValidator(_multiple_of_8)] = 512
    batch_size: int = Field(1, ge=1, le=16)
    seed: Seed | None = None
    # A `job:preview` sample image (the prompt, with the LoRA so far) every N epochs; 0: none.
    sample_every: int = Field(0, ge=0, le=1000)
    sample_steps: int = Field(20, ge=1, le=100)


class JobPayload(RequestModel):
    """Common shape: every payload names its user and carries its own id field."""

    id_field: ClassVar[str] = "job_id"
    queue: ClassVar[str] = ""

    user_id: UserId | None = None

    def get_id(self) -> str | None:
        """The payload's own job id (jobId, or loraId for training), if given."""
        return getattr(self, self.id_field)

    def repeatable(self) -> bool:
        """Whether running it again gives the same result (so an earlier run's may answer it)."""
        return False

    def with_ids(self, job_id: str, user_id: str) -> JobPayload:
        """A copy with the job id and user id filled in."""
        return self.model_copy(update={self.id_field: job_id, "user_id": user_id})


class TrainingJob(JobPayload):
    """The seed's training payload: `{loraId, userId, prompt, imageUrls, settings}`."""

    id_field: ClassVar[str] = "lora_id"
    queue: ClassVar[str] = "training"

    lora_id: JobId | None = None
    prompt: str = Field(min_length=1, max_length=1000)
    image_urls: list[ImageUrl] = Field(min_length=1, max_length=64)
    settings: TrainingSettings = Field(default_factory=TrainingSettings)


class UpscalingJob(JobPayload):
    """The seed's upscaling payload: `{jobId, userId, imageUrl, scale, model}`."""

    queue: ClassVar[str] = "upscaling"

    job_id: JobId | None = None
    image_url: ImageUrl
    scale: Literal[2, 4] = 2
    model: ModelName = "lanczos"

    def repeatable(self) -> bool:
        """A lanczos resize of an upload (fixed bytes): the same image every time."""
        return self.model == "lanczos" and self.image_url.startswith(("upload://", "data:"))


class GenerationJob(JobPayload):
    """The seed's generation payload: `{jobId, userId, prompt, settings}`."""

    queue: ClassVar[str] = "generation"

    job_id: JobId | None = None
    prompt: str = Field(min_length=1, max_length=2000)
    settings: GenerationSettings = Field(default_factory=GenerationSettings)

    def repeatable(self) -> bool:
        """With an explicit seed: the same images every time (on the same model and LoRA)."""
        return self.settings.seed is not None


class SleepJob(JobPayload):
    """Test and benchmark payload for the built-in `sleep` runner (not one of the three queues)."""

    queue: ClassVar[str] = "sleep"

    job_id: JobId | None = None
    duration_s: float | None = Field(None, ge=0, le=3600)
    steps: int | None = Field(None, ge=1, le=100_000)
    fail_attempts: int | None = Field(None, ge=0, le=100)
    fail_message: str | None = Field(None, max_length=500)
    crash: Literal["segfault"] | None = None  # the worker process dies mid-job, every attempt

    def repeatable(self) -> bool:
        """A sleep (the test runner's) is the same every time."""
        return True
