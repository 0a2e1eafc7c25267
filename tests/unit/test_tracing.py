"""Tracing's carriers: whatever a job carries (a plain BullMQ producer's `tm` may be anything) is
no parent and never an error; a recorded span's carrier continues the same trace."""

from __future__ import annotations

import json
from pathlib import Path

from dash_ray import tracing
from dash_ray.config import load_settings


def test_a_hostile_carrier_is_no_parent_and_recording_under_it_never_fails(tmp_path: Path) -> None:
    for bad in ("[" * 1000, "not json", "[1, 2]", "", None):
        assert tracing.parent(bad) is None
    tracing.parent('{"traceparent": "00-zz-zz-01", "x": [1]}')  # a bad traceparent: no error either
    path = tmp_path / "spans.jsonl"
    tracing.configure("unit", load_settings(trace_file=str(path)))
    try:
        first = tracing.record("one", 1.0, 2.0, "[" * 1000)  # a root: its carrier was nothing
        assert first is not None and "traceparent" in json.loads(first)
        second = tracing.record("two", 2.0, 3.0, first)
        assert second is not None
    finally:
        tracing.shutdown()
    assert tracing.tracer() is None
    one, two = (json.loads(line) for line in path.read_text().splitlines())
    assert one["trace_id"] == two["trace_id"] and two["parent_id"] == one["span_id"] and one["parent_id"] is None


def test_a_phase_is_named_by_what_its_reports_count_else_by_their_first_word() -> None:
    assert tracing.phase_name("generating with tiny-sd", {"step": 0, "steps": 4}) == "steps"
    assert tracing.phase_name("epoch 1/3 step 2/5", {"epoch": 1, "step": 2}) == "epochs"
    assert tracing.phase_name("loading 3 image(s)", {}) == "loading"
    assert tracing.phase_name("Upscaling 64x64 x2 with lanczos", {"step": None}) == "upscaling"
    assert tracing.phase_name("", {}) == tracing.phase_name("42%", {}) == "progress"


def test_phases_begin_at_the_report_naming_them_and_end_when_the_next_begins() -> None:
    # training: images loaded, then epochs (the steps of each counted in it), then the run ends
    training = tracing.Phases(began=100.0)
    training.note(0, "loading 2 image(s)", {}, at=100.0)
    for k, at in enumerate((103.0, 104.0, 105.0)):
        training.note(30 * (k + 1), f"epoch 1/1 step {k + 1}/3", {"epoch": 1, "step": k + 1}, at=at)
    assert [(n, s, e) for n, s, e, _ in training.spans(end=106.0)] == [("loading", 100.0, 103.0),
                                                                      ("epochs", 103.0, 106.0)]
    assert training.spans(end=106.0)[0][3] == {"dash.message": "loading 2 image(s)", "dash.progress": 0.0}
    # a first report that says a step is done: its phase began with the run
    sleep = tracing.Phases(began=10.0)
    sleep.note(50, "step 1/2", {"step": 1, "steps": 2}, at=11.0)
    sleep.note(100, "step 2/2", {"step": 2, "steps": 2}, at=12.0)
    assert [(n, s, e) for n, s, e, _ in sleep.spans(end=12.5)] == [("steps", 10.0, 12.5)]
    # one that starts its phase (after a model load): the time before it is in no phase
    generation = tracing.Phases(began=10.0)
    generation.note(0, "generating with tiny-sd", {"step": 0, "steps": 2}, at=13.0)
    assert [(n, s, e) for n, s, e, _ in generation.spans(end=14.0)] == [("steps", 13.0, 14.0)]
    # a runner whose messages never stop changing: the phases are capped, the last one runs on
    chatty = tracing.Phases(began=0.0)
    for i in range(200):
        chatty.note(0, "abcdefghij"[i % 2] + " now", {}, at=float(i))
    spans = chatty.spans(end=500.0)
    assert len(spans) == tracing.Phases.MAX and spans[-1][2] == 500.0
    assert tracing.Phases(began=0.0).spans(end=1.0) == []  # no reports, no phases


def test_a_recorded_span_keeps_its_kind_and_error(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    tracing.configure("unit", load_settings(trace_file=str(path)))
    try:
        root = tracing.record("root", 1.0, 2.0)
        tracing.record_span("webhook job:completed", 1.5, 1.8, root, {"dash.attempt": 1, "http.response.status_code": None},
                            kind="CLIENT", error="HTTP 503")
    finally:
        tracing.shutdown()
    first, call = (json.loads(line) for line in path.read_text().splitlines())
    assert (first["kind"], first["status"]) == ("INTERNAL", "UNSET")
    assert (call["kind"], call["status"], call["parent_id"]) == ("CLIENT", "ERROR", first["span_id"])
    assert call["attributes"] == {"dash.attempt": 1}  # (None: left out)
