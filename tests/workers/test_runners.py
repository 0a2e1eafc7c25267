"""The three workloads on tiny diffusers models: sizes, progress, seeds, LoRA, cancel, resume, bad inputs."""

from __future__ import annotations

import base64
import io
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dash_ray.errors import InvalidPayload, JobCancelled, WorkerError
from dash_ray.models import parse_payload
from tests.workers.conftest import artifact, giant_png, png_data_url

GEN = {"userId": "u", "prompt": "a red fox"}


@pytest.fixture(scope="module")
def gen(worker_settings: Any) -> Any:
    from dash_ray.workers.generation import GenerationRunner

    return GenerationRunner(settings=worker_settings)


@pytest.fixture(scope="module")
def ups(worker_settings: Any) -> Any:
    from dash_ray.workers.upscaling import UpscalingRunner

    return UpscalingRunner(settings=worker_settings)


@pytest.fixture(scope="module")
def trainer(worker_settings: Any) -> Any:
    from dash_ray.workers.training import TrainingRunner

    return TrainingRunner(settings=worker_settings)


def progress_of(events: list[Any]) -> list[float]:
    return [e.progress for e in events]


def test_generation_pngs_progress_and_seed(gen: Any, run_job: Any, worker_settings: Any) -> None:
    data = {**GEN, "jobId": "g1", "settings": {"steps": 4, "width": 64, "height": 80, "seed": 7, "numImages": 2}}
    result, events = run_job(gen, "generation", data, job_id="g1")
    assert not isinstance(result, Exception), result
    assert len(result["images"]) == 2 and result["seed"] == 7
    for url in result["images"]:
        with Image.open(artifact(worker_settings, url)) as img:
            assert img.format == "PNG" and img.size == (64, 80)
    steps = [e for e in events if e.step]
    assert [e.step for e in steps] == [1, 2, 3, 4]  # one event per step
    prog = progress_of(events)
    assert prog == sorted(prog) and prog[-1] == 100
    previews = [e for e in run_job.bus.extra if e.type == "job:preview"]
    assert len(previews) == 1 and previews[0].step == 1  # the next ones come within 0.5 s: throttled
    with Image.open(io.BytesIO(base64.b64decode(previews[0].image.split(",", 1)[1]))) as img:
        assert img.format == "WEBP" and img.size == (64, 80)  # the 8x10 latent, scaled up
    logs = [e.message for e in run_job.bus.extra if e.type == "job:log"]
    assert logs[0].startswith("model tiny") and "64x80, 4 steps, 2 image(s), seed 7" in logs
    again, _ = run_job(gen, "generation", {**data, "jobId": "g2"}, job_id="g2")
    a = np.asarray(Image.open(artifact(worker_settings, result["images"][0])))
    b = np.asarray(Image.open(artifact(worker_settings, again["images"][0])))
    assert np.array_equal(a, b)  # same seed, same image
    assert again["modelLoads"] == result["modelLoads"]  # warm: not loaded again
    assert gen.cache.hits >= 1 and gen.loaded_models() == ["tiny"]


def test_upscaling_lanczos_and_diffusers(ups: Any, run_job: Any, worker_settings: Any) -> None:
    src = png_data_url(32, 24)
    for model, scale in (("lanczos", 2), ("lanczos", 4), ("tiny-upscaler", 4), ("tiny-upscaler", 2)):
        result, events = run_job(ups, "upscaling", {"userId": "u", "jobId": "up", "imageUrl": src, "scale": scale,
                                                     "model": model})
        assert not isinstance(result, Exception), result
        assert (result["width"], result["height"]) == (32 * scale, 24 * scale)
        with Image.open(artifact(worker_settings, result["image"])) as img:
            assert img.size == (32 * scale, 24 * scale)
        prog = progress_of(events)
        assert prog == sorted(prog) and prog[-1] > 0
        if model != "lanczos":
            assert [e.step for e in events if e.step] == list(range(1, 21))  # through the old callback=


def test_training_lora_changes_the_image(trainer: Any, gen: Any, run_job: Any, worker_settings: Any) -> None:
    from diffusers import StableDiffusionPipeline

    data = {"userId": "u", "loraId": "lora1", "prompt": "sks", "imageUrls": [png_data_url(), png_data_url(color=(0, 90, 200))],
            "settings": {"epochs": 3, "resolution": 64, "batchSize": 1, "learningRate": 0.01, "rank": 4, "seed": 1}}
    result, events = run_job(trainer, "training", data, job_id="lora1")
    assert not isinstance(result, Exception), result
    epochs = [e for e in events if e.loss is not None]
    assert [e.epoch for e in epochs] == [1, 2, 3] and all("epoch" in e.message and "loss" in e.message for e in epochs)
    assert progress_of(events) == sorted(progress_of(events)) and events[-1].progress == 100
    weights = artifact(worker_settings, result["weights"])
    assert weights.name == "pytorch_lora_weights.safetensors" and weights.exists()
    # stock diffusers loads it, and it changes the image for the same seed
    pipe = StableDiffusionPipeline.from_pretrained(str(worker_settings.models_dir / "tiny"))
    pipe.set_progress_bar_config(disable=True)
    import torch

    def image() -> Any:
        return np.asarray(pipe("a red fox", num_inference_steps=3, height=64, width=64,
                               generator=torch.Generator().manual_seed(3)).images[0]).astype(int)

    before = image()
    pipe.load_lora_weights(str(weights.parent))
    after = image()
    assert np.abs(before - after).mean() > 0.5
    # and through the generation runner, by loraId
    with_lora, _ = run_job(gen, "generation", {**GEN, "jobId": "gl", "settings": {"steps": 3, "width": 64, "height": 64,
                                                                                 "seed": 3, "loraId": "lora1"}},
                           job_id="gl")
    without, _ = run_job(gen, "generation", {**GEN, "jobId": "gn", "settings": {"steps": 3, "width": 64, "height": 64,
                                                                               "seed": 3}}, job_id="gn")
    a = np.asarray(Image.open(artifact(worker_settings, with_lora["images"][0]))).astype(int)
    b = np.asarray(Image.open(artifact(worker_settings, without["images"][0]))).astype(int)
    assert np.abs(a - b).mean() > 0.5


def test_training_resumes_from_the_last_finished_epoch(trainer: Any, run_job: Any) -> None:
    data = {"userId": "u", "loraId": "resume1", "prompt": "sks", "imageUrls": [png_data_url()] * 3,
            "settings": {"epochs": 4, "resolution": 64, "batchSize": 1, "rank": 4, "seed": 2}}
    cancel = threading.Event()

    def stop_after_epoch_2() -> None:
        while not cancel.is_set():
            time.sleep(0.005)

    # run 1: cancel as soon as epoch 2 is reported (a worker death has the same effect: the checkpoint stays)
    from dash_ray.scheduler.runner import JobContext, Publisher, Reporter
    from tests.workers.conftest import RecordingBus

    class StopAt2(RecordingBus):
        def publish(self, events: list[Any], tokens: list[str] | None = None) -> list[bool]:
            out = super().publish(events, tokens)
            if any(getattr(e, "epoch", None) == 2 and getattr(e, "loss", None) is not None for e in events):
                cancel.set()
            return out

    bus = StopAt2()
    pub = Publisher(bus)
    rep = Reporter(JobContext(id="resume1", queue="training", data=data, user_id="u"), pub, max_hz=1000, cancelled=cancel)
    with pytest.raises(JobCancelled):
        trainer.run(JobContext(id="resume1", queue="training", data=data, user_id="u"), rep)
    rep.flush()
    pub.close()
    assert max(e.epoch for e in bus.progress if e.loss is not None) == 2
    result, events = run_job(trainer, "training", data, job_id="resume1", attempt=2)
    assert result["resumedFromEpoch"] == 2
    assert events[1].message.startswith("resuming after epoch 2/4")
    assert [e.epoch for e in events if e.loss is not None] == [2, 3, 4]  # the resume note, then 3 and 4


def test_training_asked_to_yield_stops_after_the_checkpoint_it_just_committed(trainer: Any) -> None:
    """Asked to yield its GPU, a training job stops at the end of the epoch whose checkpoint it
    committed (never after the last epoch, which is cheaper to finish)."""
    from dash_ray.errors import JobPreempted
    from dash_ray.scheduler.runner import JobContext, Publisher, Reporter
    from tests.workers.conftest import RecordingBus

    data = {"userId": "u", "loraId": "yield1", "prompt": "sks", "imageUrls": [png_data_url()] * 2,
            "settings": {"epochs": 3, "resolution": 64, "batchSize": 1, "rank": 4, "seed": 2}}
    bus = RecordingBus()
    bus.yield_asked = True
    pub = Publisher(bus)
    ctx = JobContext(id="yield1", queue="training", data=data, user_id="u")
    rep = Reporter(ctx, pub, max_hz=1000)
    with pytest.raises(JobPreempted, match="after epoch 1/3"):
        trainer.run(ctx, rep)
    rep.flush()
    pub.close()
    assert max(e.epoch for e in bus.progress if e.loss is not None) == 1
    assert bus.checkpoints["yield1"].startswith("u/yield1/checkpoint")
    one = {**data, "loraId": "yield2", "settings": {**data["settings"], "epochs": 1}}
    ctx = JobContext(id="yield2", queue="training", data=one, user_id="u")
    pub = Publisher(bus)
    rep = Reporter(ctx, pub, max_hz=1000)
    assert trainer.run(ctx, rep)["epochs"] == 1  # its last epoch: it finishes
    rep.flush()
    pub.close()


def test_a_stale_training_attempt_stops_at_its_refused_checkpoint_and_leaves_no_file(
        trainer: Any, worker_settings: Any) -> None:
    """When Redis refuses an attempt's checkpoint (another attempt holds the job), the attempt
    stops there and deletes the file it wrote; the checkpoint that counts is untouched."""
    from dash_ray.scheduler.runner import JobContext, Publisher, Reporter
    from tests.workers.conftest import RecordingBus

    class Refusing(RecordingBus):
        def commit_checkpoint(self, job_id: str, queue: str, token: str, path: str) -> tuple[bool, str, bool]:
            return False, "", False

    data = {"userId": "u", "loraId": "stale1", "prompt": "sks", "imageUrls": [png_data_url()] * 2,
            "settings": {"epochs": 3, "resolution": 64, "batchSize": 1, "rank": 4, "seed": 2}}
    bus = Refusing()
    pub = Publisher(bus)
    ctx = JobContext(id="stale1", queue="training", data=data, user_id="u", token="tok-stale-attempt")
    try:
        with pytest.raises(JobCancelled):
            trainer.run(ctx, Reporter(ctx, pub, max_hz=1000))
    finally:
        pub.close()
    assert [e.epoch for e in bus.progress if e.loss is not None] == []  # stopped at its first checkpoint
    folder = Path(worker_settings.artifacts_location) / "u" / "stale1"
    assert not folder.exists() or not list(folder.glob("checkpoint-*.pt"))


def test_cancel_mid_generation_stops_after_the_next_step(gen: Any, run_job: Any) -> None:
    cancel = threading.Event()
    timer = threading.Timer(0.5, cancel.set)
    timer.start()
    t0 = time.monotonic()
    result, events = run_job(gen, "generation", {**GEN, "settings": {"steps": 150, "width": 64, "height": 64}},
                             cancel=cancel)
    took = time.monotonic() - t0
    assert isinstance(result, JobCancelled)
    assert took < 3 and len([e for e in events if e.step]) < 150
    ok, _ = run_job(gen, "generation", {**GEN, "settings": {"steps": 2, "width": 64, "height": 64}})
    assert not isinstance(ok, Exception)  # the runner keeps serving


def test_bad_inputs_get_clear_errors(ups: Any, trainer: Any, run_job: Any, worker_settings: Any, tmp_path: Any) -> None:
    from dash_ray.services.registry import ModelRegistry

    reg = ModelRegistry(worker_settings)
    with pytest.raises(InvalidPayload, match="unknown model"):
        reg.validate(parse_payload("generation", {**GEN, "settings": {"model": "sd99"}}))
    with pytest.raises(InvalidPayload, match="unknown model"):
        reg.validate(parse_payload("upscaling", {"userId": "u", "imageUrl": png_data_url(), "model": "nope"}))
    with pytest.raises(InvalidPayload):
        parse_payload("upscaling", {"userId": "u", "imageUrl": png_data_url(), "scale": 3})
    with pytest.raises(InvalidPayload):
        parse_payload("training", {"userId": "u", "prompt": "x", "imageUrls": []})
    base = worker_settings.allowed_file_dirs[0]
    (base / "not-an-image.png").write_bytes(b"hello, I am text")
    (base / "giant.png").write_bytes(giant_png())
    cases = {
        f"file://{base}/not-an-image.png": "not an image",
        f"file://{base}/giant.png": "too large",
        "https://evil.example.com/x.png": "not allowed",
        f"file://{tmp_path}/elsewhere.png": "outside the allowed folders",
        "data:text/plain;base64,aGVsbG8=": "must be an image",
    }
    for url, reason in cases.items():
        result, _ = run_job(ups, "upscaling", {"userId": "u", "imageUrl": url, "scale": 2})
        assert isinstance(result, WorkerError) and reason in str(result), (url, result)
    result, _ = run_job(trainer, "training", {"userId": "u", "prompt": "x", "imageUrls": [f"file://{base}/giant.png"]})
    assert isinstance(result, WorkerError)
    ok, _ = run_job(ups, "upscaling", {"userId": "u", "imageUrl": png_data_url(), "scale": 2})
    assert ok["width"] == 64  # still serving
