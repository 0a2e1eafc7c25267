"""LoRAs kept loaded as named adapters of the cached pipelines: a job switches to its LoRA (or
turns LoRA off) instead of loading and unloading weights, LRU-evicted by count and bytes."""

from __future__ import annotations

import hashlib
import logging
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dash_ray.services.artifacts import ArtifactStore

__all__ = ["AdapterCache", "AdapterKey", "file_version"]

log = logging.getLogger(__name__)


def file_version(store: ArtifactStore, rel: str) -> str | None:
    """A fingerprint of a stored file that changes when it is rewritten (its size and modification
    time, or the store's ETag); None when there is no such file."""
    try:
        info = store.fs.info(store.local_path(rel))
    except FileNotFoundError:
        return None
    stamp = next((info[k] for k in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "updated") if info.get(k)), "")
    return f"{info.get('size', '')}:{stamp}"


def _has_adapters(pipe: Any) -> bool:
    """Whether any of the pipeline's models holds a LoRA adapter (loaded or left over)."""
    try:
        return any(pipe.get_list_adapters().values())
    except Exception:
        return False


@dataclass(frozen=True)
class AdapterKey:
    """One LoRA on one model: the model's cache key, the LoRA's owner and id, its file's version."""

    model: str
    user_id: str
    lora_id: str
    version: str

    @property
    def name(self) -> str:
        """The adapter's name on the pipeline: a plain identifier, one per key."""
        raw = "\0".join((self.model, self.user_id, self.lora_id, self.version)).encode()
        return "lora_" + hashlib.sha256(raw).hexdigest()[:24]

    @property
    def label(self) -> str:
        """How the scheduler names it (model affinity): `lora:<userId>/<loraId>`."""
        return f"lora:{self.user_id}/{self.lora_id}"

    def same_lora(self, other: AdapterKey) -> bool:
        """The same LoRA on the same model, whatever the version."""
        return (self.model, self.user_id, self.lora_id) == (other.model, other.user_id, other.lora_id)


@dataclass
class _Adapter:
    pipe: weakref.ref[Any]  # the pipeline holding it: a reloaded model is a new pipeline, without it
    size: int


class AdapterCache:
    """Which LoRAs are loaded on which pipeline, least recently used first: at most `max_count`
    and `max_bytes` of them, never fewer than the one in use. Driven from the runner's thread;
    `names()` and `prune()` may come from another one."""

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.entries: OrderedDict[AdapterKey, _Adapter] = OrderedDict()
        self.loads = 0
        self.hits = 0
        self._lock = threading.Lock()

    def use(self, pipe: Any, key: AdapterKey, weight: float, load: Callable[[], dict[str, Any]]) -> bool:
        """Make `key`'s LoRA the pipeline's one active adapter at `weight`, loading it (`load()`:
        its state dict) unless this pipeline holds it already; whether it was loaded."""
        with self._lock:
            entry = self.entries.get(key)
            if entry is not None and entry.pipe() is not pipe:  # its model was reloaded: a new pipeline
                del self.entries[key]
                entry = None
            if entry is not None:
                self.entries.move_to_end(key)
                self.hits += 1
        if entry is None:
            state = load()
            size = sum(t.numel() * t.element_size() for t in state.values())
            try:
                with warnings.catch_warnings():  # peft's note that the model already has adapters
                    warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                    pipe.load_lora_weights(state, adapter_name=key.name)
            except Exception:
                self._delete(pipe, [key.name])  # whatever it had injected
                raise
            with self._lock:
                self.entries[key] = _Adapter(weakref.ref(pipe), size)
                self.loads += 1
            log.info("LoRA %s/%s loaded as %s (%d bytes)", key.user_id, key.lora_id, key.name, size)
        pipe.enable_lora()
        pipe.set_adapters([key.name], adapter_weights=[weight])
        # Once this one is active (peft warns when the active one goes): older versions, never used again.
        self._drop(pipe, [k for k in self._on(pipe) if k.same_lora(key) and k != key])
        self._evict(keep=key)
        return entry is None

    def disable(self, pipe: Any) -> None:
        """Run the pipeline without LoRA (its adapters stay loaded, off)."""
        self._evict(keep=None)
        if self._on(pipe) or _has_adapters(pipe):  # also one whose delete failed: never left active
            pipe.disable_lora()

    def prune(self, alive: Iterable[Any]) -> None:
        """Forget the adapters of pipelines no longer in `alive` (evicted or dropped models)."""
        ids = {id(p) for p in alive}
        with self._lock:
            for key, entry in list(self.entries.items()):
                pipe = entry.pipe()
                if pipe is None or id(pipe) not in ids:
                    del self.entries[key]

    def names(self) -> list[str]:
        """`lora:<userId>/<loraId>` of each LoRA loaded (least recently used first)."""
        with self._lock:
            return list(dict.fromkeys(k.label for k in self.entries))

    @property
    def total_bytes(self) -> int:
        """Bytes of the loaded adapters' weights."""
        return sum(e.size for e in self.entries.values())

    def _on(self, pipe: Any) -> list[AdapterKey]:
        with self._lock:
            return [k for k, e in self.entries.items() if e.pipe() is pipe]

    def _evict(self, keep: AdapterKey | None) -> None:
        while True:
            with self._lock:
                over = len(self.entries) > self.max_count or self.total_bytes > self.max_bytes
                old = next((k for k in self.entries if k != keep), None)
                if not over or old is None:
                    return
                entry = self.entries.pop(old)
            pipe = entry.pipe()
            if pipe is not None:
                self._delete(pipe, [old.name])
            log.info("LoRA %s/%s evicted (%d loaded)", old.user_id, old.lora_id, len(self.entries))

    def _drop(self, pipe: Any, keys: list[AdapterKey]) -> None:
        with self._lock:
            for key in keys:
                self.entries.pop(key, None)
        if keys:
            self._delete(pipe, [k.name for k in keys])

    @staticmethod
    def _delete(pipe: Any, names: list[str]) -> None:
        try:
            pipe.delete_adapters(names)
        except Exception:
            log.warning("could not delete adapters %s", names, exc_info=True)
