"""The model registry: short names -> local paths or hub ids, checked at submit (no torch here)."""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from pathlib import Path

from dash_ray.config import Settings
from dash_ray.errors import InvalidPayload
from dash_ray.models.payloads import GenerationJob, JobPayload, TrainingJob, UpscalingJob
from dash_ray.services.artifacts import ArtifactStore

__all__ = ["TINY_SD", "TINY_UPSCALER", "ModelRegistry", "lora_path"]

# The built-in models (random weights, built from configs by `workers/tiny.py` on first use).
TINY_SD = "tiny"
TINY_UPSCALER = "tiny-upscaler"

BUILTIN = {TINY_SD: "builtin:" + TINY_SD, TINY_UPSCALER: "builtin:" + TINY_UPSCALER}
TEXT_TO_IMAGE = "text-to-image"
UPSCALER = "upscaler"
KIND_TTL_S = 30.0  # a model's kind, read from its model_index.json, is read again after this


def lora_path(user_id: str, lora_id: str) -> str:
    """Artifact path of a trained LoRA."""
    return f"{user_id}/{lora_id}/pytorch_lora_weights.safetensors"


class ModelRegistry:
    """Known models: DASH_MODELS plus the built-in `tiny` (SD) and `tiny-upscaler` (SD x4)."""

    def __init__(self, settings: Settings, artifacts: ArtifactStore | None = None) -> None:
        self.models = {**BUILTIN, **settings.models}
        self.default = settings.default_model
        self.artifacts = artifacts
        # (name, location) -> (kind, until when it is trusted): a submit reads no file
        self._kinds: dict[tuple[str, str], tuple[str, float]] = {}

    def resolve(self, name: str | None) -> tuple[str, str]:
        """(name, location) of a model; location is a path, a hub id or `builtin:<name>`."""
        name = name or self.default
        if name not in self.models:
            raise KeyError(name)
        return name, self.models[name]

    def kind(self, name: str | None) -> str:
        """`upscaler` or `text-to-image`: from a local model's `model_index.json` (its pipeline
        class), else from its name or hub id."""
        name, location = self.resolve(name)
        if location == BUILTIN[TINY_UPSCALER]:
            return UPSCALER
        known = self._kinds.get((name, location))
        if known is not None and known[1] > time.monotonic():
            return known[0]
        kind = self._read_kind(name, location)
        self._kinds[(name, location)] = (kind, time.monotonic() + KIND_TTL_S)
        return kind

    def _read_kind(self, name: str, location: str) -> str:
        index = Path(location) / "model_index.json"
        try:
            cls = json.loads(index.read_text()).get("_class_name", "")
            return UPSCALER if "Upscale" in cls else TEXT_TO_IMAGE
        except (OSError, ValueError):
            pass
        return UPSCALER if "upscal" in f"{name} {location}".lower() else TEXT_TO_IMAGE

    def _check(self, field: str, name: str | None, kind: str = TEXT_TO_IMAGE) -> None:
        try:
            self.resolve(name)
        except KeyError:
            known = ", ".join(sorted(self.models))
            raise InvalidPayload(
                f"invalid payload: {field}: unknown model {name or self.default!r} (known: {known})",
                errors=[{"field": field, "message": f"unknown model {name or self.default!r}"}],
            ) from None
        found = self.kind(name)
        if found != kind:
            shown = name or self.default
            raise InvalidPayload(
                f"invalid payload: {field}: {shown!r} is {'an' if found == UPSCALER else 'a'} {found} model; "
                f"this queue needs {'an' if kind == UPSCALER else 'a'} {kind} model",
                errors=[{"field": field, "message": f"{shown!r} is a model of another kind ({found})"}],
            )

    def content(self, payload: JobPayload) -> str:
        """What a payload's inputs hold beyond its fields, for the result cache: its LoRA's
        digest ('' for none)."""
        if isinstance(payload, GenerationJob) and payload.settings.lora_id and payload.user_id and self.artifacts:
            path = lora_path(payload.user_id, payload.settings.lora_id)
            return self.artifacts.digest(path) if self.artifacts.exists(path) else ""
        return ""

    def validate(self, payload: JobPayload, waits: Collection[str] = ()) -> None:
        """Raise InvalidPayload (422) for an unknown model or a LoRA that was not trained (nor
        is being trained by a job it waits for: `waits`)."""
        if isinstance(payload, GenerationJob):
            self._check("settings.model", payload.settings.model)
            lora = payload.settings.lora_id
            if (lora and lora not in waits and self.artifacts is not None and payload.user_id
                    and not self.artifacts.exists(lora_path(payload.user_id, lora))):
                raise InvalidPayload(
                    f"invalid payload: settings.loraId: no trained LoRA {lora!r} (train it first)",
                    errors=[{"field": "settings.loraId", "message": "no trained LoRA with this id"}],
                )
        elif isinstance(payload, TrainingJob):
            self._check("settings.baseModel", payload.settings.base_model)
        elif isinstance(payload, UpscalingJob) and payload.model != "lanczos":
            self._check("model", payload.model, UPSCALER)
