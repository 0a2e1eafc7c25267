"""GPU slots sized by measured memory: each worker reports the peak memory of every job (per
model and size: the job's cost shape), and a queue's GPU fraction is sized from the largest
peak of the models it serves, with headroom, within the configured fraction. Small models then
take small slots, and more workers (of this queue and the others) share a GPU.

Ray's `num_gpus` only places actors; it caps no memory. So the size is a promise kept by
measurement: a model that needs more than its slot shows up in the peaks, and the queue's next
workers ask for more (never more than DASH_<QUEUE>_GPU_FRACTION). Pure functions: tested
without Ray or a GPU.
"""

from __future__ import annotations

import math

__all__ = ["HEADROOM", "MIN_FRACTION", "MemoryBook", "sized_fraction"]

HEADROOM = 1.25  # a slot is the peak plus a quarter (allocator fragmentation, a larger batch)
MIN_FRACTION = 0.05  # at most 20 workers a GPU


class MemoryBook:
    """A queue's measured peaks: bytes by job shape and kind (`cuda` or `rss`), the most seen,
    and the GPU size its workers reported."""

    def __init__(self) -> None:
        self.peaks: dict[str, tuple[str, int]] = {}  # shape -> (kind, bytes)
        self.gpu_bytes: int | None = None
        self.dirty = False

    def measured(self, shape: str, kind: str, nbytes: int) -> None:
        """Fold one job's peak in (a shape keeps its largest)."""
        old = self.peaks.get(shape)
        if old is None or old[0] != kind or nbytes > old[1]:
            self.peaks[shape] = (kind, nbytes)
            self.dirty = True

    def fraction(self, configured: float) -> float:
        """The GPU fraction the queue's next workers ask for."""
        cuda = [b for kind, b in self.peaks.values() if kind == "cuda"]
        return sized_fraction(cuda, self.gpu_bytes, configured)


def sized_fraction(peaks: list[int], gpu_bytes: int | None, configured: float, *,
                   headroom: float = HEADROOM, min_fraction: float = MIN_FRACTION) -> float:
    """The GPU share a worker needs for the largest of `peaks` (bytes of GPU memory) on a GPU of
    `gpu_bytes`, with headroom, rounded up to 1/n so that n workers fill a GPU exactly; never over
    `configured` (nor under `min_fraction`). Nothing measured, or no GPU: `configured`."""
    if not peaks or not gpu_bytes:
        return configured
    need = max(peaks) * headroom / gpu_bytes
    if need >= configured:
        return configured
    n = max(1, math.floor(1 / max(need, min_fraction) + 1e-9))
    return round(min(configured, 1 / n), 6)
