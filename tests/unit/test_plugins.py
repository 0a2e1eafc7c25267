"""The plug-in contracts, without servers: the runner contract (dash_ray/runners.py) and the
queue definition (models/queues.py), on the built-in queues and the tests' plug-in queue."""

from __future__ import annotations

import ast
import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import dash_ray
from dash_ray.config import QueueSettings, load_settings
from dash_ray.errors import InvalidPayload, UnknownQueue
from dash_ray.models.cost import cost_shape, flat_cost
from dash_ray.models.images import PIL_FORMATS, sniff_image
from dash_ray.models.payloads import SleepJob
from dash_ray.models.queues import (
    QUEUE_TABLE,
    QueueDef,
    load_queue_plugins,
    queue_def,
    register_queue,
)
from dash_ray.runners import JobContext, Runner, RunnerSpec, load_runner, peak_rss
from dash_ray.scheduler.resources import QueueSpec, queue_specs
from tests.plugin_queue import QUEUE as ECHO
from tests.plugin_queue import EchoRunner


class Bare(Runner):
    def __init__(self, settings: Any = None) -> None:
        pass

    def run(self, job: JobContext, reporter: Any) -> Any:
        return job.data


class NotARunner:
    def __init__(self, settings: Any = None) -> None:
        pass

    def run(self, job: JobContext, reporter: Any) -> Any:
        return None


def test_every_runner_hook_has_a_default() -> None:
    r = load_runner(RunnerSpec(f"{__name__}:Bare"), settings=None)
    assert r.loaded_models() == [] and r.device_memory() is None
    assert r.reset_peak_memory() is None and r.after_job() is None and r.close() is None
    kind, nbytes = r.peak_memory()
    assert kind == "rss" and nbytes >= peak_rss() // 2 > 0
    assert r.run(JobContext("j", "q", {"a": 1}), reporter=None) == {"a": 1}


def test_a_runner_must_subclass_the_contract() -> None:
    with pytest.raises(TypeError, match=r"not a dash_ray\.runners\.Runner"):
        load_runner(RunnerSpec(f"{__name__}:NotARunner"), settings=None)


def test_the_plugin_runner_offers_its_models_through_the_hook() -> None:
    r = load_runner(ECHO.runner, settings=None)
    assert isinstance(r, EchoRunner) and r.loaded_models() == []


def test_workers_and_the_contract_import_nothing_of_the_scheduler() -> None:
    root = Path(dash_ray.__file__).parent
    for path in [*sorted((root / "workers").glob("*.py")), root / "runners.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("dash_ray.scheduler"), (path.name, node.module)
                if path.name == "runners.py":
                    assert node.module in ("__future__", "dash_ray.errors") or not node.module.startswith("dash_ray")


def test_one_class_describes_a_queue_declared_configured_and_scheduled() -> None:
    assert QueueSettings is QueueDef and QueueSpec is QueueDef
    settings = load_settings(generation_concurrency=2, generation_gpu_fraction=0.5)
    gen = settings.queue("generation")
    assert isinstance(gen, QueueDef) and (gen.concurrency, gen.gpu_fraction) == (2, 0.5)
    assert gen.payload is QUEUE_TABLE["generation"].payload and gen.cost is QUEUE_TABLE["generation"].cost
    assert gen.bundle() == {"dash_generation": 1.0, "GPU": 0.5}
    assert [s.name for s in queue_specs(settings)] == ["training", "upscaling", "generation"]


def test_a_queue_without_a_cost_rule_cannot_be_defined() -> None:
    with pytest.raises(TypeError):
        QueueDef("x", "x", SleepJob, RunnerSpec("m:C"), 1, 0.1, timeout_s=1)  # type: ignore[call-arg]
    q = QueueDef("x", "x", SleepJob, "m:C", 1, 0.1, timeout_s=1, cost=flat_cost)  # type: ignore[arg-type]
    assert q.runner == RunnerSpec("m:C") and q.cost({"durationS": 9}) == ("-", 1.0)
    with pytest.raises(TypeError, match="image field"):
        QueueDef("x", "x", SleepJob, RunnerSpec("m:C"), 1, 0.1, timeout_s=1, cost=flat_cost, image_fields=("nope",))


def test_cost_shapes_follow_each_queues_rule_and_an_unknown_queue_has_none() -> None:
    assert cost_shape("generation", {"settings": {"model": "sd", "width": 640, "steps": 20, "numImages": 2}}) == (
        "sd:640x512", 40.0)
    assert cost_shape("training", {"imageUrls": ["a", "b"], "settings": {"epochs": 3}}) == ("-:512:r8", 6.0)
    assert cost_shape("upscaling", {"scale": 2}) == ("lanczos:x2", 1.0)
    assert cost_shape("sleep", {"durationS": 2.5}) == ("-", 2.5)
    assert cost_shape("echo", {"repeat": 4}) == ("echo", 4.0)
    with pytest.raises(UnknownQueue):  # not silently the test queue's rule
        cost_shape("nope", {"durationS": 2.5})


def test_each_queue_names_the_model_its_payload_needs() -> None:
    def model(queue: str, data: dict[str, Any]) -> str | None:
        return queue_def(queue).model_of(data)

    assert model("generation", {"settings": {"model": "sdxl"}}) == "sdxl"
    assert model("generation", {"settings": {}}) is None
    assert model("training", {"settings": {"baseModel": "sd15"}}) == "sd15"
    assert model("upscaling", {"model": "x4"}) == "x4"
    assert model("sleep", {"model": "x4"}) is None
    assert model("echo", {"model": "m1"}) == "m1"


def test_image_fields_are_named_on_the_wire_and_ids_by_their_field() -> None:
    up = QUEUE_TABLE["upscaling"]
    trn = QUEUE_TABLE["training"]
    assert up.image_refs(up.payload.model_validate({"imageUrl": "https://h/a.png"})) == [("imageUrl", "https://h/a.png")]
    payload = trn.payload.model_validate({"prompt": "p", "imageUrls": ["https://h/a.png", "upload://" + "0" * 32]})
    assert [f for f, _ in trn.image_refs(payload)] == ["imageUrls.0", "imageUrls.1"]
    assert QUEUE_TABLE["generation"].image_refs(QUEUE_TABLE["generation"].payload.model_validate({"prompt": "p"})) == []
    assert (trn.id_field, up.id_field, ECHO.id_field) == ("loraId", "jobId", "jobId")


async def test_the_gateway_policy_checks_what_each_definition_declares() -> None:
    from dash_ray.gateway.auth import Principal
    from dash_ray.gateway.policy import SubmitPolicy

    policy = SubmitPolicy(load_settings(max_inline_image_bytes=1024, max_generation_mpx_steps=1,
                                        high_priority_per_user=0), store=None, artifacts=None)  # type: ignore[arg-type]
    user = Principal("alice")
    big = "data:image/png;base64," + "A" * 4000
    with pytest.raises(InvalidPayload) as exc:  # the plug-in queue's image field, by its declaration
        await policy.check("echo", ECHO.payload.model_validate({"text": "t", "imageUrl": big}), None, user, "alice")
    assert exc.value.errors[0]["field"] == "imageUrl"
    await policy.check("echo", ECHO.payload.model_validate({"text": "t"}), None, user, "alice")
    gen = QUEUE_TABLE["generation"].payload.model_validate({"prompt": "p"})
    with pytest.raises(InvalidPayload, match="megapixel-steps"):  # the generation queue's own limits
        await policy.check("generation", gen, None, user, "alice")
    trn = QUEUE_TABLE["training"].payload.model_validate({"prompt": "p", "imageUrls": ["https://h/a.png"]})
    from dash_ray.models.options import JobOptions

    high = JobOptions(priority=1)
    with pytest.raises(InvalidPayload, match="priority 1 on training is for admins"):
        await policy.check("training", trn, high, user, "alice")
    assert policy.quota("training", high, user).high and not policy.quota("upscaling", high, user).high


def test_plugins_register_by_name_once_and_travel_with_their_definition() -> None:
    assert load_queue_plugins("tests.plugin_queue:QUEUE") == [ECHO]  # again: no change
    assert QUEUE_TABLE["echo"] is ECHO
    with pytest.raises(ValueError, match="already defined"):
        register_queue(replace(ECHO, title="another echo"))
    with pytest.raises(ValueError, match="module:NAME"):
        load_queue_plugins("tests.plugin_queue")
    with pytest.raises(TypeError, match="not a QueueDef"):
        load_queue_plugins("tests.plugin_queue:EchoRunner")
    # A process that receives a definition (a Ray actor given its queue) learns the queue.
    data = pickle.dumps(ECHO)
    del QUEUE_TABLE["echo"]
    try:
        assert pickle.loads(data) == ECHO and "echo" in QUEUE_TABLE
    finally:
        QUEUE_TABLE["echo"] = ECHO


def test_a_queue_registered_after_the_settings_keeps_its_definitions_limits() -> None:
    s = load_settings(enable_sleep_queue=True)
    echo = s.queue("echo")
    assert (echo.concurrency, echo.gpu_fraction, echo.timeout_s) == (2, 0.0, 60.0)
    assert "echo" in s.queue_names and "echo" not in load_settings().queue_names  # test-only
    assert s.preemptible_queues == ["training"] and s.preempt_for == ["generation", "upscaling"]


def test_one_list_of_image_formats() -> None:
    assert PIL_FORMATS == ("PNG", "JPEG", "WEBP", "BMP", "GIF")
    assert sniff_image(b"\x89PNG\r\n\x1a\n" + b"\0" * 8) == "image/png"
    assert sniff_image(b"RIFF\0\0\0\0WEBPVP8 ") == "image/webp"
    assert sniff_image(b"GIF89a" + b"\0" * 10) == "image/gif"
    assert sniff_image(b"%PDF-1.7" + b"\0" * 8) is None
