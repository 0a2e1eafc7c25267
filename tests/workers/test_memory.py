"""A worker held to its memory share: the simulated cap on the CPU, per-run peaks, batch sizing
from learned peaks, the out-of-memory error, and the CUDA calls (on a stand-in allocator)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from dash_ray.config import Settings, load_settings
from dash_ray.errors import DeviceOutOfMemory, WorkerError
from dash_ray.workers import memory
from dash_ray.workers.memory import MemoryGuard, out_of_memory

MiB = 1024 * 1024
GEN = {"userId": "u", "prompt": "a red fox"}


def resident(nbytes: int) -> torch.Tensor:
    """A tensor of `nbytes`, every page written (resident)."""
    return torch.ones(nbytes // 4, dtype=torch.float32)


def test_simulated_cap_raises_past_the_share_only() -> None:
    guard = MemoryGuard(simulated_bytes=256 * MiB)
    guard.limit(0.25)
    assert guard.cap_bytes == 64 * MiB
    guard.start()
    small = resident(2 * MiB)
    guard.check("step 1")
    guard.start()
    big = resident(128 * MiB)
    with pytest.raises(torch.OutOfMemoryError, match=r"at step 3: tried to use \d+ bytes, the worker's share is "
                                                     rf"{64 * MiB} bytes \(simulated\)"):
        guard.check("step 3")
    del small, big


def test_peak_is_the_runs_own() -> None:
    guard = MemoryGuard(simulated_bytes=1024 * MiB)
    guard.limit(1.0)
    guard.start()
    big = resident(128 * MiB)
    assert guard.peak() >= 120 * MiB
    del big
    assert guard.peak() >= 120 * MiB  # a peak, not the current size
    guard.start()
    small = resident(1 * MiB)
    assert guard.peak() < 16 * MiB
    del small


def test_sampled_where_the_kernel_peak_cannot_be_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_reset_resident_peak", lambda: False)
    guard = MemoryGuard(simulated_bytes=256 * MiB)
    guard.limit(0.25)
    guard.start()
    big = resident(128 * MiB)
    with pytest.raises(torch.OutOfMemoryError):
        guard.check()
    del big
    assert guard.peak() >= 120 * MiB  # the sample taken while it was held
    guard.start()
    assert guard.peak() < 16 * MiB


def test_no_cap_without_a_share_or_a_simulated_gpu() -> None:
    guard = MemoryGuard()
    guard.limit(0.5)
    assert guard.cap_bytes is None
    guard.start()
    big = resident(64 * MiB)
    guard.check()  # nothing to hold it to
    guard.learn("64x64", 1, 10 * MiB)
    assert guard.max_rows("64x64", 8) == 8
    del big
    simulated = MemoryGuard(simulated_bytes=100)
    simulated.limit(0.5)
    assert simulated.cap_bytes == 50
    simulated.limit(0)
    assert simulated.cap_bytes is None


def test_rows_that_fit_from_the_learned_peaks() -> None:
    guard = MemoryGuard(simulated_bytes=2000)
    guard.limit(0.5)  # cap 1000, 900 with the margin
    guard.learn("64x64", 4, 400)
    guard.learn("64x64", 2, 100)  # a shape keeps its largest
    guard.learn("64x64", 0, 100)
    guard.learn("64x64", 3, 0)
    assert guard.row_bytes == {"64x64": 100}
    assert guard.max_rows("64x64", 8) == 8
    assert guard.max_rows("64x64", 20) == 9
    guard.learn("512x512", 1, 600)
    assert guard.max_rows("512x512", 8) == 1
    guard.learn("1024x1024", 1, 5000)  # not even one fits: one row all the same
    assert guard.max_rows("1024x1024", 8) == 1
    assert guard.max_rows("unseen", 8) == 8
    assert guard.max_rows("64x64", 0) == 1


def test_cuda_holds_the_allocator_to_the_share(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Any]] = []
    allocated = {"now": 10 * 10**9, "peak": 14 * 10**9}

    class Props:
        total_memory = 80 * 10**9

    cuda = torch.cuda
    monkeypatch.setattr(cuda, "current_device", lambda: 0)
    monkeypatch.setattr(cuda, "get_device_properties", lambda index: Props())
    monkeypatch.setattr(cuda, "set_per_process_memory_fraction",
                        lambda share, index: calls.append(("fraction", (round(share, 6), index))))
    monkeypatch.setattr(cuda, "reset_peak_memory_stats", lambda index: calls.append(("reset", index)))
    monkeypatch.setattr(cuda, "memory_allocated", lambda index: allocated["now"])
    monkeypatch.setattr(cuda, "max_memory_allocated", lambda index: allocated["peak"])

    guard = MemoryGuard(device="cuda", headroom=0.1)
    guard.limit(0.5)
    assert calls == [("fraction", (0.45, 0))]
    assert guard.cap_bytes == 36 * 10**9
    guard.start()
    assert calls[-1] == ("reset", 0) and guard.base_bytes == 10 * 10**9
    assert guard.peak() == 14 * 10**9  # the models held count: the slot must hold them too
    allocated["peak"] = 99 * 10**9
    guard.check("step 1")  # the allocator enforces on CUDA
    guard.learn("1024x1024", 2, 14 * 10**9)  # what was allocated at the start is not the rows'
    assert guard.row_bytes == {"1024x1024": 2 * 10**9}
    assert guard.max_rows("1024x1024", 16) == 11  # (36 - 10) GB * 0.9 / 2 GB
    guard.limit(0)
    assert calls[-1] == ("fraction", (1.0, 0)) and guard.cap_bytes is None
    MemoryGuard(device="cuda:1", headroom=0.2).limit(0.25)
    assert calls[-1] == ("fraction", (0.2, 1))


def test_out_of_memory_names_the_size_and_batch() -> None:
    cause = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                                   "79.1 GiB. If reserved but unallocated memory is large try setting "
                                   "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True\nmore")
    err = out_of_memory(cause, width=1024, height=768, rows=4, peak=123)
    assert isinstance(err, DeviceOutOfMemory) and isinstance(err, WorkerError)
    assert str(err) == ("out of GPU memory at 1024x768, batch 4: CUDA out of memory. Tried to allocate 2.00 GiB. "
                        "GPU 0 has a total capacity of 79.1 GiB.")
    assert err.to_dict() == {"code": "out_of_memory", "message": str(err), "peak_bytes": 123}
    assert str(out_of_memory(torch.OutOfMemoryError(), width=64, height=64, rows=1)).endswith("batch 1: OutOfMemoryError")


# The tiny model adds about 7-10 MiB to the process at 64x64 warm (about 50-60 MiB with its load
# on the first run), 45-60 MiB at 64x64 batch 8, and 270-340 MiB at 512x512: a 150 MiB share
# (half of a simulated 300 MiB GPU) holds the first and trips at the last.
SIMULATED = 300 * MiB


@pytest.fixture(scope="module")
def held(worker_settings: Settings) -> Any:
    from dash_ray.workers.generation import GenerationRunner

    settings = load_settings(data_dir=worker_settings.data_dir, artifacts_url=worker_settings.artifacts_url,
                             torch_threads=1, simulated_gpu_bytes=SIMULATED)
    runner = GenerationRunner(settings=settings)
    runner.limit_memory(0.5)
    return runner


def test_runner_reports_each_jobs_own_peak(held: Any, run_job: Callable[..., Any]) -> None:
    assert held.memory.cap_bytes == SIMULATED // 2
    held.reset_peak_memory()
    kind, nbytes = held.peak_memory()
    assert kind == "rss" and 0 <= nbytes < 16 * MiB
    held.reset_peak_memory()
    result, _ = run_job(held, "generation", {**GEN, "settings": {"steps": 2, "width": 64, "height": 64}})
    assert not isinstance(result, Exception), result
    kind, nbytes = held.peak_memory()
    assert kind == "rss" and 0 < nbytes < SIMULATED // 2
    held.memory.check()


def test_runner_past_its_share_runs_out(held: Any, run_job: Callable[..., Any]) -> None:
    held.after_job()
    held.reset_peak_memory()
    result, _ = run_job(held, "generation", {**GEN, "settings": {"steps": 2, "width": 512, "height": 512}})
    assert isinstance(result, DeviceOutOfMemory), result  # checked between steps and after decoding
    assert str(result).startswith("out of GPU memory at 512x512, batch 1: ") and result.peak_bytes > SIMULATED // 2
    held.after_job()
    held.reset_peak_memory()
    assert held.peak_memory()[1] < 16 * MiB
