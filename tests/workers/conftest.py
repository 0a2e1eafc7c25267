"""Runners on tiny models built from configs at test time (nothing downloaded); no Ray, no Redis."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dash_ray.config import Settings, load_settings
from dash_ray.testing import RecordingSink


@pytest.fixture(scope="session")
def worker_settings(tmp_path_factory: pytest.TempPathFactory, tiny_data_dir: Path) -> Settings:
    """Settings whose data dir holds the tiny models (built once for the session)."""
    root = tmp_path_factory.mktemp("workers")
    return load_settings(data_dir=tiny_data_dir, artifacts_url=str(root / "artifacts"), torch_threads=1,
                         allowed_file_dirs=[str(root)], allowed_image_hosts=["127.0.0.1"])


class RecordingBus(RecordingSink):
    """The reporter's publisher talks to this instead of Redis. Committed checkpoints are kept per
    job id across buses, as Redis keeps them across attempts (the fencing itself is tested on a
    real Redis, in tests/redis/test_worker_core.py)."""

    checkpoints_kept: dict[str, str] = {}

    def __init__(self) -> None:
        super().__init__()
        self.checkpoints = self.checkpoints_kept


@pytest.fixture
def run_job() -> Callable[..., Any]:
    """Run a job with a runner; returns (result or exception, its progress events); `run.bus` is
    the last run's bus (its previews and log lines in `extra`)."""
    from dash_ray.scheduler.runner import JobContext, Publisher, Reporter

    def run(runner: Any, queue: str, data: dict[str, Any], job_id: str = "j1", attempt: int = 1,
            cancel: threading.Event | None = None) -> tuple[Any, list[Any]]:
        bus = RecordingBus()
        pub = Publisher(bus)
        job = JobContext(id=job_id, queue=queue, data=data, attempt=attempt, attempts=3, user_id=data.get("userId"))
        rep = Reporter(job, pub, max_hz=1000, cancelled=cancel)
        try:
            result: Any = runner.run(job, rep)
        except Exception as exc:  # returned for the test to inspect
            result = exc
        rep.flush()
        pub.close()
        run.bus = bus  # type: ignore[attr-defined]
        return result, bus.progress

    return run


def png_data_url(width: int = 32, height: int = 24, color: tuple[int, int, int] = (200, 30, 30)) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def giant_png(width: int = 10_000, height: int = 10_000) -> bytes:
    """A PNG whose header claims width x height (100 MP) while the file stays tiny."""
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length + "IHDR"
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:ihdr + 13])) & 0xFFFFFFFF
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def artifact(settings: Settings, url: str) -> Path:
    """Local file of an artifact URL (/v1/artifacts/<path>)."""
    return Path(settings.artifacts_location) / url.removeprefix("/v1/artifacts/")
