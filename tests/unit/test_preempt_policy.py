"""GPU arbitration's policy (scheduler/preempt.py), without Ray."""

from __future__ import annotations

from dash_ray.config import load_settings
from dash_ray.scheduler.preempt import Arbitration, Candidate, starved_for, to_preempt
from dash_ray.scheduler.service import arbitration

ARB = Arbitration(preemptible=True, yields_to=("generation",), peers=("generation",), after_s=30, max_preemptions=2)


def test_starved_for_reads_since_when() -> None:
    assert starved_for({"starved": "100.0"}, 130.5) == 30.5
    assert starved_for({"starved": "0"}, 130.5) == 0.0
    assert starved_for({}, 1.0) == starved_for(None, 1.0) == 0.0


def test_a_job_yields_once_the_other_queue_starved_long_enough() -> None:
    jobs = [Candidate("t1", 2, 0)]
    assert to_preempt(jobs, 29.9, ARB, set()) is None
    assert to_preempt(jobs, 30.0, ARB, set()) == "t1"
    assert to_preempt(jobs, 300, ARB, {"t1"}) is None  # one at a time: it was asked already


def test_priority_one_never_yields_and_a_job_yields_at_most_max_times() -> None:
    assert to_preempt([Candidate("vip", 1, 0)], 999, ARB, set()) is None
    assert to_preempt([Candidate("t", 2, 2)], 999, ARB, set()) is None
    assert to_preempt([Candidate("t", 2, 1)], 999, ARB, set()) == "t"
    # the lowest priority first, then the one preempted least
    jobs = [Candidate("a", 2, 0), Candidate("b", 3, 1), Candidate("c", 3, 0)]
    assert to_preempt(jobs, 999, ARB, set()) == "c"


def test_not_preemptible_queues_never_yield() -> None:
    assert to_preempt([Candidate("g", 2, 0)], 999, Arbitration(), set()) is None


def test_settings_make_training_yield_to_generation_and_upscaling() -> None:
    s = load_settings(preempt_after_s=45, max_preemptions=3)
    t = arbitration(s, "training")
    assert t.preemptible and t.yields_to == ("generation", "upscaling") and t.after_s == 45 and t.max_preemptions == 3
    assert set(t.peers) == {"generation", "upscaling"}
    g = arbitration(s, "generation")
    assert not g.preemptible and set(g.peers) == {"training", "upscaling"}
    assert not arbitration(load_settings(preempt_after_s=0), "training").preemptible
    assert arbitration(load_settings(preemptible_queues="upscaling"), "upscaling").preemptible
