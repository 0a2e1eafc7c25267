"""A worker's device memory, held to its share: the cap, each run's peak, out-of-memory errors
that name the job's size, and the batch size that fits, learned from measured peaks per shape.

(Interface first; the enforcement and the CPU simulation are filled in by the memory work.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from dash_ray.errors import DeviceOutOfMemory

__all__ = ["MemoryGuard", "out_of_memory"]

log = logging.getLogger(__name__)


@dataclass
class MemoryGuard:
    """One worker's memory cap and what its runs measured.

    `limit(fraction)` sets the cap (CUDA: the allocator itself refuses past it). `start()` before
    a run; `check(where)` between steps raises `torch.OutOfMemoryError` once a run is past the
    cap (on CUDA the allocator raises first; on the CPU it is the simulation); `peak()` is the
    run's peak bytes so far. `learn(shape, rows, peak)` and `max_rows(shape, limit)` size batches.
    """

    device: str = "cpu"
    cap_bytes: int | None = None  # None: no cap
    row_bytes: dict[str, int] = field(default_factory=dict)  # shape -> measured bytes per row

    def limit(self, fraction: float) -> None:
        """Hold the worker to `fraction` of its device (0: no cap)."""

    def start(self) -> None:
        """A run starts: its peak is measured from here."""

    def peak(self) -> int:
        """The current run's peak bytes so far."""
        return 0

    def check(self, where: str = "") -> None:
        """Raise `torch.OutOfMemoryError` if the run is past the cap."""

    def learn(self, shape: str, rows: int, peak: int) -> None:
        """A run of `rows` rows of `shape` peaked at `peak` bytes."""
        if rows > 0 and peak > 0:
            self.row_bytes[shape] = max(self.row_bytes.get(shape, 0), peak // rows)

    def max_rows(self, shape: str, limit: int) -> int:
        """How many rows of `shape` one run may carry within the cap (at most `limit`, at least 1)."""
        return max(1, limit)


def out_of_memory(exc: BaseException, *, width: int, height: int, rows: int, peak: int = 0) -> DeviceOutOfMemory:
    """The clear error of a job that ran out of its device memory."""
    return DeviceOutOfMemory(f"out of GPU memory at {width}x{height}, batch {rows}: {exc}", peak_bytes=peak)
