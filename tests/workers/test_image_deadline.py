"""An image server that drips its answer's header (each byte well within a read timeout) is cut
at DASH_IMAGE_FETCH_TIMEOUT_S all told: the deadline is total, not per read."""

from __future__ import annotations

import threading
import time
from typing import Any

from dash_ray.config import load_settings
from dash_ray.errors import WorkerError
from dash_ray.workers.images import fetch_bytes
from tests.tarpit import Tarpit


def test_a_server_that_drips_its_headers_hits_the_total_deadline() -> None:
    settings = load_settings(allowed_image_hosts=["127.0.0.1"], allowed_image_networks=["127.0.0.1/32"],
                             image_fetch_timeout_s=1.0)
    got: dict[str, Any] = {}

    def fetch() -> None:
        t0 = time.monotonic()
        try:
            got["data"] = fetch_bytes(url, settings)
        except Exception as exc:  # for the test to inspect
            got["error"] = exc
        got["took"] = time.monotonic() - t0

    with Tarpit(drip_s=0.2) as pit:
        url = f"http://127.0.0.1:{pit.port}/a.png"
        thread = threading.Thread(target=fetch, daemon=True)
        thread.start()
        thread.join(5)
        assert not thread.is_alive(), "the fetch was still waiting on the dripping server after 5 s"
        pit.wait(lambda p: len(p.closed) >= 1, timeout_s=2)
    assert isinstance(got.get("error"), WorkerError) and "took over 1s" in str(got["error"]), got
    assert got["took"] < 2.0 and pit.durations[0] < 2.0, (got, pit.durations)
