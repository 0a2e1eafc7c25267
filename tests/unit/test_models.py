"""Payload, option and message validation: every limit names its field."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dash_ray.errors import InvalidPayload, UnknownQueue
from dash_ray.models import (
    JobCompletedEvent,
    JobFailedEvent,
    JobProgressEvent,
    SubscribeMessage,
    parse_client_message,
    parse_event,
    parse_options,
    parse_payload,
)

GEN = {"userId": "alice", "prompt": "a red fox"}
UPS = {"userId": "alice", "imageUrl": "https://img.example.com/a.png", "scale": 2, "model": "lanczos"}
TRN = {"userId": "alice", "prompt": "sks dog", "imageUrls": ["https://img.example.com/1.png"]}


def test_seed_payloads_round_trip_in_camel_case() -> None:
    g = parse_payload("generation", {**GEN, "jobId": "g1", "settings": {"numImages": 2, "guidanceScale": 5}})
    assert g.wire(exclude_none=True)["settings"]["numImages"] == 2
    assert set(g.wire()) == {"jobId", "userId", "prompt", "settings"}
    u = parse_payload("upscaling", {**UPS, "jobId": "u1"})
    assert set(u.wire()) == {"jobId", "userId", "imageUrl", "scale", "model"}
    t = parse_payload("training", {**TRN, "loraId": "l1", "settings": {"epochs": 3, "rank": 4}})
    assert set(t.wire()) == {"loraId", "userId", "prompt", "imageUrls", "settings"}
    assert t.get_id() == "l1"


BAD = [
    ("generation", {**GEN, "prompt": ""}, "prompt"),
    ("generation", {**GEN, "prompt": "x" * 2001}, "prompt"),
    ("generation", {"userId": "alice"}, "prompt"),
    ("generation", {**GEN, "prompt": 5}, "prompt"),
    ("generation", {**GEN, "settings": {"steps": 0}}, "settings.steps"),
    ("generation", {**GEN, "settings": {"steps": 151}}, "settings.steps"),
    ("generation", {**GEN, "settings": {"width": 100}}, "settings.width"),
    ("generation", {**GEN, "settings": {"height": 4096}}, "settings.height"),
    ("generation", {**GEN, "settings": {"guidanceScale": 31}}, "settings.guidanceScale"),
    ("generation", {**GEN, "settings": {"numImages": 9}}, "settings.numImages"),
    ("generation", {**GEN, "settings": {"seed": -1}}, "settings.seed"),
    ("generation", {**GEN, "settings": {"negativePrompt": "n" * 2001}}, "settings.negativePrompt"),
    ("generation", {**GEN, "settings": {"loraWeight": 3}}, "settings.loraWeight"),
    ("generation", {**GEN, "settings": {"model": "bad name!"}}, "settings.model"),
    ("generation", {**GEN, "settings": {"unknown": 1}}, "settings.unknown"),
    ("generation", {**GEN, "jobId": "has space"}, "jobId"),
    ("generation", {**GEN, "jobId": "12345"}, "jobId"),
    ("generation", {**GEN, "userId": "bad/user"}, "userId"),
    ("generation", {**GEN, "extra": True}, "extra"),
    ("upscaling", {**UPS, "scale": 3}, "scale"),
    ("upscaling", {**UPS, "imageUrl": "ftp://x/y.png"}, "imageUrl"),
    ("upscaling", {k: v for k, v in UPS.items() if k != "imageUrl"}, "imageUrl"),
    ("upscaling", {**UPS, "model": ""}, "model"),
    ("training", {**TRN, "imageUrls": []}, "imageUrls"),
    ("training", {**TRN, "imageUrls": ["https://x/y.png"] * 65}, "imageUrls"),
    ("training", {**TRN, "settings": {"epochs": 0}}, "settings.epochs"),
    ("training", {**TRN, "settings": {"learningRate": 1}}, "settings.learningRate"),
    ("training", {**TRN, "settings": {"rank": 0}}, "settings.rank"),
    ("training", {**TRN, "settings": {"resolution": 100}}, "settings.resolution"),
    ("training", {**TRN, "settings": {"batchSize": 17}}, "settings.batchSize"),
    ("training", {**TRN, "prompt": None}, "prompt"),
]


@pytest.mark.parametrize(("queue", "data", "field"), BAD, ids=[f"{q}-{f}-{i}" for i, (q, _d, f) in enumerate(BAD)])
def test_bad_payload_names_the_field(queue: str, data: dict, field: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        parse_payload(queue, data)
    fields = [e["field"] for e in info.value.errors]
    assert any(f == field or f.startswith(field + ".") for f in fields), fields
    assert field in info.value.message


@pytest.mark.parametrize(
    ("options", "field"),
    [({"priority": 0}, "priority"), ({"priority": 4}, "priority"), ({"delayS": -1}, "delayS"),
     ({"attempts": 0}, "attempts"), ({"backoff": {"type": "linear"}}, "backoff.type"),
     ({"backoff": {"delayS": -2}}, "backoff.delayS"), ({"jobId": "a b"}, "jobId"), ({"bogus": 1}, "bogus")],
)
def test_bad_options_name_the_field(options: dict, field: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        parse_options(options)
    assert f"options.{field}" in info.value.message


def test_unknown_queue_and_non_object_body() -> None:
    with pytest.raises(UnknownQueue):
        parse_payload("painting", GEN)
    with pytest.raises(UnknownQueue):
        parse_payload("sleep", {"userId": "a"})  # test-only queue is off by default
    with pytest.raises(InvalidPayload):
        parse_payload("generation", ["not", "an", "object"])


def test_events_are_one_union_on_type_with_seed_fields() -> None:
    p = JobProgressEvent(job_id="j", queue="generation", status="active", progress=40, message="step 2/5", seq=3, ts=1.0)
    wire = p.wire(exclude_none=True)
    assert {"type", "jobId", "queue", "status", "progress", "message", "seq", "ts"} <= set(wire)
    assert wire["type"] == "job:progress"
    assert isinstance(parse_event(json.dumps(wire)), JobProgressEvent)
    c = parse_event({"type": "job:completed", "jobId": "j", "queue": "q", "result": {"a": 1}})
    assert isinstance(c, JobCompletedEvent) and c.result == {"a": 1}
    f = parse_event({"type": "job:failed", "jobId": "j", "queue": "q", "error": "boom"})
    assert isinstance(f, JobFailedEvent) and f.error == "boom"


def test_client_messages() -> None:
    m = parse_client_message('{"type":"subscribe","jobIds":["a","b"]}')
    assert isinstance(m, SubscribeMessage) and m.job_ids == ["a", "b"]
    m = parse_client_message('{"type":"subscribe","jobIds":["a"],"since":{"a":4}}')
    assert m.since == {"a": 4}
    for bad in ['{"type":"subscribe"}', '{"type":"nope"}', '{"type":"subscribe","jobIds":[]}', "not json"]:
        with pytest.raises(ValueError):
            parse_client_message(bad)


def test_light_imports_do_not_load_torch_or_ray() -> None:
    code = (
        "import sys, dash_ray, dash_ray.models, dash_ray.client; "
        "bad = [m for m in ('torch', 'ray', 'diffusers', 'bullmq') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
