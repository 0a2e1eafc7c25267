"""What the three runners share: settings, device, model cache, artifacts, pipeline loading."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from dash_ray.config import Settings
from dash_ray.errors import WorkerError
from dash_ray.models.images import artifact_ref
from dash_ray.models.payloads import upload_path
from dash_ray.runners import Runner
from dash_ray.services.artifacts import ArtifactStore
from dash_ray.services.registry import ModelRegistry
from dash_ray.workers.cache import ModelCache, device_and_dtype, free_memory
from dash_ray.workers.memory import MemoryGuard
from dash_ray.workers.tiny import ensure_tiny

__all__ = ["TorchRunner"]

log = logging.getLogger(__name__)


class TorchRunner(Runner):
    """Base of the GPU runners: one per worker actor, holding its models between jobs."""

    def __init__(self, settings: Settings) -> None:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        diffusers_logging.set_verbosity_error()
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.settings = settings
        self.device, self.dtype = device_and_dtype(settings.torch_dtype)
        self.cache = ModelCache(settings.model_cache_bytes)
        self.memory = MemoryGuard(device=self.device, headroom=settings.gpu_memory_headroom,
                                  simulated_bytes=settings.simulated_gpu_bytes)
        self.artifacts = ArtifactStore(settings.artifacts_location)
        self.registry = ModelRegistry(settings, self.artifacts)
        self.timings: dict[str, float] = {}

    # --- models ---
    def uploads_of(self, user_id: str | None) -> Callable[[str], bytes]:
        """Reads `upload://` references from `user_id`'s uploads, and `artifact://` ones (a job's
        image input resolved from another job's result) from `user_id`'s result files, only."""
        def read(ref: str) -> bytes:
            if ref.startswith("artifact://"):
                rel = artifact_ref(ref)
                if rel is None or not user_id or rel.split("/", 1)[0] != user_id:
                    raise ValueError("not the job owner's result file")
                path = rel
            else:
                path = upload_path(user_id or "_", ref)
            with self.artifacts.open(path) as f:
                return bytes(f.read(self.settings.max_image_bytes + 1))

        return read

    def location(self, name: str | None) -> tuple[str, str]:
        """(name, local path or hub id) of a model, building a built-in one on first use."""
        try:
            name, loc = self.registry.resolve(name)
        except KeyError:
            raise WorkerError(f"unknown model {name!r}") from None
        if loc.startswith("builtin:"):
            loc = str(ensure_tiny(loc.split(":", 1)[1], self.settings.models_dir))
        return name, loc

    def pipeline(self, name: str | None, cls: Any) -> tuple[str, Any]:
        """A loaded pipeline of `cls` for a model (from the cache when warm)."""
        name, loc = self.location(name)

        def load() -> Any:
            t0 = time.perf_counter()
            pipe = cls.from_pretrained(loc, dtype=self.dtype)
            pipe.to(self.device)
            pipe.set_progress_bar_config(disable=True)
            self.timings["load_s"] = time.perf_counter() - t0
            log.info("loaded model %s on %s (%s) in %.2fs", name, self.device, self.dtype, self.timings["load_s"])
            return pipe

        self.timings["load_s"] = 0.0
        return name, self.cache.get((name, str(self.dtype)), load)

    def limit_memory(self, gpu_fraction: float) -> None:
        """Hold the worker to its GPU share (CUDA: the allocator refuses past it; on the CPU, a
        share of DASH_SIMULATED_GPU_BYTES when set)."""
        self.memory.limit(gpu_fraction)

    def reset_peak_memory(self) -> None:
        """Start measuring a job's peak memory."""
        self.memory.start()

    def peak_memory(self) -> tuple[str, int]:
        """The last job's peak memory: ("cuda", the allocator's peak bytes, models held included)
        on a GPU, else ("rss", what the job added to the process's resident memory)."""
        return ("cuda" if self.memory.cuda else "rss"), self.memory.peak()

    def device_memory(self) -> int | None:
        """Bytes of the worker's GPU (None on the CPU)."""
        if self.device.startswith("cuda"):
            import torch

            return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
        return None

    def device_name(self) -> str:
        """The GPU's model (`NVIDIA H100 80GB HBM3`), else `cpu`."""
        if self.device.startswith("cuda"):
            import torch

            return str(torch.cuda.get_device_name(torch.cuda.current_device()))
        return "cpu"

    def loaded_models(self) -> list[str]:
        """Names of the models this worker holds (the consumer prefers it for them)."""
        return self.cache.names()

    def after_job(self) -> None:
        """Give memory back between jobs (more so after a failure or cancel)."""
        free_memory()

    @contextlib.contextmanager
    def dropping_models_on_oom(self) -> Iterator[None]:
        """Run a pipeline; out of GPU memory, drop every cached model (then the error goes on)."""
        import torch

        try:
            yield
        except torch.cuda.OutOfMemoryError:
            log.warning("out of memory: dropping cached models")
            self.cache.clear()
            raise

    def close(self) -> None:
        """Drop the models."""
        self.cache.clear()

    def generator(self, seed: int) -> Any:
        """A torch Generator on the worker's device, seeded."""
        import torch

        return torch.Generator(device="cpu" if self.device == "cpu" else self.device).manual_seed(seed)
