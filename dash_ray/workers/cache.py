"""Per-worker model cache: loaded pipelines stay between jobs, LRU-evicted under a memory budget."""

from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelCache", "cuda_devices", "device_and_dtype", "free_memory", "keep_out_of_gc", "model_bytes"]

log = logging.getLogger(__name__)


def cuda_devices() -> int:
    """How many CUDA devices this machine has (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def device_and_dtype(preference: str = "auto") -> tuple[str, Any]:
    """CUDA (fp16, or bf16 where supported and asked) when present, else CPU (fp32)."""
    import torch

    if torch.cuda.is_available():
        if preference == "float32":
            return "cuda", torch.float32
        if preference == "bfloat16" and torch.cuda.is_bf16_supported():
            return "cuda", torch.bfloat16
        return "cuda", torch.float16
    return "cpu", torch.float32


def model_bytes(obj: Any) -> int:
    """Bytes of parameters and buffers of a pipeline or module."""
    import torch

    total = 0
    modules = obj.components.values() if hasattr(obj, "components") else [obj]
    for m in modules:
        if isinstance(m, torch.nn.Module):
            total += sum(p.numel() * p.element_size() for p in m.parameters())
            total += sum(b.numel() * b.element_size() for b in m.buffers())
    return total


def free_memory(full: bool = False) -> None:
    """Return freed memory to the system (and the CUDA caching allocator).

    Loaded models are frozen out of the garbage collector's view (`keep_out_of_gc`): a full
    collection over a pipeline's half a million objects took ~0.2 s after every job. So a plain
    call collects only what jobs made since; `full` (a model dropped) looks at everything again."""
    if full:
        gc.unfreeze()
        gc.collect()
        gc.freeze()
    else:
        gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


def keep_out_of_gc() -> None:
    """Move every object alive now (a model just loaded) out of the collector's view: they live
    until their model is dropped, and a full collection need not walk them after every job."""
    gc.collect()
    gc.freeze()


@dataclass
class _Entry:
    value: Any
    size: int


@dataclass
class ModelCache:
    """Keeps loaded models by key (model name, dtype); evicts least recently used over `budget_bytes`."""

    budget_bytes: int
    entries: OrderedDict[tuple[str, str], _Entry] = field(default_factory=OrderedDict)
    loads: int = 0
    hits: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: tuple[str, str], load: Callable[[], Any]) -> Any:
        """The cached value for key, loading it (and evicting others) when absent."""
        with self._lock:
            entry = self.entries.get(key)
            if entry is not None:
                self.entries.move_to_end(key)
                self.hits += 1
                return entry.value
        value = load()
        size = model_bytes(value)
        with self._lock:
            self.loads += 1
            self.entries[key] = _Entry(value, size)
            self._evict(keep=key)
        keep_out_of_gc()
        return value

    def _evict(self, keep: tuple[str, str]) -> None:
        evicted = False
        while self.total_bytes > self.budget_bytes and len(self.entries) > 1:
            old_key = next(k for k in self.entries if k != keep)
            self.entries.pop(old_key)
            log.info("model cache: evicted %s (budget %d bytes)", old_key, self.budget_bytes)
            evicted = True
        free_memory(full=evicted)

    def clear(self) -> None:
        """Drop everything (after an out-of-memory error, or on close)."""
        with self._lock:
            self.entries.clear()
        free_memory(full=True)

    @property
    def total_bytes(self) -> int:
        """Bytes held by cached models."""
        return sum(e.size for e in self.entries.values())

    def names(self) -> list[str]:
        """Model names held (for model affinity)."""
        return [k[0] for k in self.entries]
