"""GPU slots sized by measured memory (scheduler/sizing.py), without Ray or a GPU."""

from __future__ import annotations

from dash_ray.gateway.metrics import ReplicaMetrics, render
from dash_ray.runners import peak_rss
from dash_ray.scheduler.sizing import MemoryBook, sized_fraction

GiB = 1024**3


def test_a_small_model_gets_a_small_slot_rounded_to_a_fill_of_the_gpu() -> None:
    # 2 GiB peak, a quarter of headroom, on an 80 GiB GPU: 2.5/80 = 1/32 -> the 1/20 floor
    assert sized_fraction([2 * GiB], 80 * GiB, 0.2) == 0.05
    # 6 GiB on 24 GiB: 7.5/24 = 0.3125 -> 1/3 of a GPU, but never over the configured 0.2
    assert sized_fraction([6 * GiB], 24 * GiB, 0.2) == 0.2
    assert sized_fraction([6 * GiB], 24 * GiB, 1.0) == round(1 / 3, 6)
    # the largest peak decides: 3 GiB and 9 GiB on 40 GiB: 11.25/40 -> 1/3
    assert sized_fraction([3 * GiB, 9 * GiB], 40 * GiB, 1.0) == round(1 / 3, 6)
    # exactly a quarter: four fill the GPU
    assert sized_fraction([int(0.2 * 40 * GiB)], 40 * GiB, 1.0) == 0.25


def test_nothing_measured_or_no_gpu_keeps_the_configured_fraction() -> None:
    assert sized_fraction([], 80 * GiB, 0.33) == 0.33
    assert sized_fraction([2 * GiB], None, 0.33) == 0.33
    assert sized_fraction([100 * GiB], 80 * GiB, 1.0) == 1.0  # more than a GPU: the most it may ask


def test_the_book_keeps_each_shapes_largest_peak_and_sizes_from_gpu_peaks_only() -> None:
    book = MemoryBook()
    book.measured("tiny:64x64", "rss", 900 * 1024**2)
    assert book.fraction(0.2) == 0.2  # a CPU peak sizes nothing
    book.gpu_bytes = 80 * GiB
    book.measured("sd15:512x512", "cuda", 3 * GiB)
    book.measured("sd15:512x512", "cuda", 2 * GiB)  # smaller: the larger stays
    assert book.peaks["sd15:512x512"] == ("cuda", 3 * GiB)
    assert book.fraction(0.2) == 0.05
    book.measured("sdxl:1024x1024", "cuda", 11 * GiB)
    assert book.fraction(0.2) == round(1 / 5, 6)


def test_peak_rss_is_this_process() -> None:
    assert 10 * 1024**2 < peak_rss() < 64 * GiB


def test_metrics_show_the_fractions_and_peaks() -> None:
    text = render({"generation": {"waiting": 0}}, {}, ReplicaMetrics("r1"),
                  {"generation": (0.05, {"sd15:512x512": ("cuda", 3 * GiB)})})
    assert 'dash_worker_gpu_fraction{queue="generation"} 0.05' in text
    assert f'dash_job_peak_memory_bytes{{queue="generation",shape="sd15:512x512",kind="cuda"}} {3 * GiB}' in text


def test_metrics_show_cold_starts_by_phase_and_the_warm_workers_kept() -> None:
    cold = {"generation": {"readyS": {"count": 2, "sum": 12.5, "max": 7.0}, "loadS": {"count": 1, "sum": 0.25,
                                                                                     "max": 0.25}}}
    text = render({"generation": {"waiting": 0}}, {}, ReplicaMetrics("r1"), cold=cold,
                  min_workers={"generation": 2, "training": 0})
    lines = text.splitlines()
    assert "# TYPE dash_worker_cold_start_seconds summary" in lines
    assert "# TYPE dash_worker_cold_start_max_seconds gauge" in lines
    assert "# TYPE dash_queue_min_workers gauge" in lines
    assert 'dash_worker_cold_start_seconds_sum{queue="generation",phase="readyS"} 12.5' in lines
    assert 'dash_worker_cold_start_seconds_count{queue="generation",phase="readyS"} 2' in lines
    assert 'dash_worker_cold_start_seconds_count{queue="generation",phase="loadS"} 1' in lines
    assert 'dash_worker_cold_start_max_seconds{queue="generation",phase="readyS"} 7' in lines
    assert 'dash_queue_min_workers{queue="generation"} 2' in lines and 'dash_queue_min_workers{queue="training"} 0' in lines
    assert "dash_worker_cold_start_seconds_sum{" not in render({}, {}, ReplicaMetrics("r1"))  # none reported
