"""A worker's device memory, held to its share: the cap, each run's peak, out-of-memory errors
that name the job's size, and the batch size that fits, learned from measured peaks per shape.

On CUDA the caching allocator enforces the cap (`set_per_process_memory_fraction`): the job that
overruns gets `torch.OutOfMemoryError`, never a neighbour. On the CPU a simulated GPU of
`DASH_SIMULATED_GPU_BYTES` stands in: a run's footprint is what it adds to the process's resident
memory, and `check()` raises the same error once it passes the worker's share.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from dash_ray.errors import DeviceOutOfMemory

__all__ = ["ROW_MARGIN", "MemoryGuard", "out_of_memory", "resident_bytes"]

log = logging.getLogger(__name__)

ROW_MARGIN = 0.1  # a batch is sized to fill the room left under the cap less this part
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_HWM = re.compile(rb"^VmHWM:\s+(\d+)\s+kB", re.MULTILINE)


def resident_bytes() -> int:
    """This process's resident memory now (Linux `/proc/self/statm`; 0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _resident_peak() -> int:
    """The kernel's peak resident bytes of this process since its last reset (VmHWM; 0: none)."""
    try:
        with open("/proc/self/status", "rb") as f:
            m = _HWM.search(f.read())
    except OSError:
        return 0
    return int(m.group(1)) * 1024 if m else 0


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def _trim_heap() -> None:
    """Give the C heap's free pages back to the system, so that a run's footprint is not hidden
    by memory an earlier run freed but the process kept (glibc only)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _reset_resident_peak() -> bool:
    """Reset the kernel's peak resident counter (VmHWM, and getrusage's ru_maxrss) to the current
    resident size; whether it could."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class MemoryGuard:
    """One worker's memory cap and what its runs measured.

    `limit(fraction)` sets the cap (CUDA: the allocator itself refuses past it). `start()` before
    a run; `check(where)` between steps raises `torch.OutOfMemoryError` once a run is past the
    cap (on CUDA the allocator raises first; on the CPU it is the simulation); `peak()` is the
    run's peak bytes so far. `learn(shape, rows, peak)` and `max_rows(shape, limit)` size batches.

    On CUDA the bytes are the allocator's (the models held count); on the simulated device they
    are what the run added to the process's resident memory since `start()`.
    """

    device: str = "cpu"
    headroom: float = 0.1  # CUDA: the part of the share left for the context and uncounted kernels
    simulated_bytes: int | None = None  # the CPU's simulated GPU (None: no cap on the CPU)
    cap_bytes: int | None = None  # None: no cap
    base_bytes: int = 0  # what the cap already held at the last start (CUDA: allocated; simulated: 0)
    row_bytes: dict[str, int] = field(default_factory=dict)  # shape -> measured bytes per row
    _rss_base: int = field(default=0, repr=False)
    _rss_peak: int = field(default=0, repr=False)  # sampled, where the kernel's counter cannot be reset
    _hwm_resets: bool = field(default=True, repr=False)

    @property
    def cuda(self) -> bool:
        """Whether the guard holds a CUDA device."""
        return self.device.startswith("cuda")

    def _index(self) -> int:
        import torch

        index = torch.device(self.device).index
        return torch.cuda.current_device() if index is None else index

    def limit(self, fraction: float) -> None:
        """Hold the worker to `fraction` of its device (0: no cap)."""
        fraction = min(max(fraction, 0.0), 1.0)
        if self.cuda:
            import torch

            index = self._index()
            share = fraction * (1 - self.headroom) if fraction > 0 else 1.0
            torch.cuda.set_per_process_memory_fraction(share, index)
            total = int(torch.cuda.get_device_properties(index).total_memory)
            self.cap_bytes = int(share * total) if fraction > 0 else None
        elif fraction > 0 and self.simulated_bytes:
            self.cap_bytes = int(fraction * self.simulated_bytes)
        else:
            self.cap_bytes = None
        if self.cap_bytes is not None:
            log.info("worker memory held to %d bytes (%.3g of %s%s)", self.cap_bytes, fraction, self.device,
                     "" if self.cuda else ", simulated")

    def start(self) -> None:
        """A run starts: its peak is measured from here."""
        if self.cuda:
            import torch

            index = self._index()
            torch.cuda.reset_peak_memory_stats(index)
            self.base_bytes = int(torch.cuda.memory_allocated(index))
            return
        if self.cap_bytes is not None:
            _trim_heap()
        if self._hwm_resets and not _reset_resident_peak():
            log.info("peak resident memory cannot be reset here: sampling it instead")
            self._hwm_resets = False
        self.base_bytes = 0
        self._rss_base = self._rss_peak = resident_bytes()

    def peak(self) -> int:
        """The current run's peak bytes so far."""
        if self.cuda:
            import torch

            return int(torch.cuda.max_memory_allocated(self._index()))
        self._rss_peak = max(self._rss_peak, resident_bytes())
        top = _resident_peak() if self._hwm_resets else 0
        return max(0, max(top, self._rss_peak) - self._rss_base)

    def check(self, where: str = "") -> None:
        """Raise `torch.OutOfMemoryError` if the run is past the cap (CUDA: the allocator does it)."""
        if self.cuda or self.cap_bytes is None:
            return
        used = self.peak()
        if used > self.cap_bytes:
            import torch

            at = f" at {where}" if where else ""
            raise torch.OutOfMemoryError(f"out of memory{at}: tried to use {used} bytes, the worker's share is "
                                         f"{self.cap_bytes} bytes (simulated)")

    def learn(self, shape: str, rows: int, peak: int) -> None:
        """A run of `rows` rows of `shape` peaked at `peak` bytes (as `peak()` measured it since the
        last `start()`: what was held then is not the rows')."""
        per_row = (peak - self.base_bytes) // rows if rows > 0 else 0
        if per_row > 0:
            self.row_bytes[shape] = max(self.row_bytes.get(shape, 0), per_row)

    def max_rows(self, shape: str, limit: int) -> int:
        """How many rows of `shape` one run may carry within the cap (at most `limit`, at least 1)."""
        per_row = self.row_bytes.get(shape, 0)
        if self.cap_bytes is None or per_row <= 0:
            return max(1, limit)
        room = (self.cap_bytes - self.base_bytes) * (1 - ROW_MARGIN)
        return max(1, min(limit, int(room // per_row)))


def out_of_memory(exc: BaseException, *, width: int, height: int, rows: int, peak: int = 0) -> DeviceOutOfMemory:
    """The clear error of a job that ran out of its device memory (the cause's first line, less
    PyTorch's allocator advice)."""
    lines = str(exc).strip().splitlines()
    cause = lines[0].split(" If reserved but unallocated")[0].strip()[:500] if lines else type(exc).__name__
    return DeviceOutOfMemory(f"out of GPU memory at {width}x{height}, batch {rows}: {cause}", peak_bytes=peak)
