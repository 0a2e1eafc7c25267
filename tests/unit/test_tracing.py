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
