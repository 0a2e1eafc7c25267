"""Process-wide setup, in one place: logging, library defaults, Ray's address, the GC.

Entry points call `setup()`: the CLI, each Ray actor (queue consumer, GPU worker) and each
gateway replica. Nothing else in dash-ray changes process-wide state.
"""

from __future__ import annotations

import gc
import logging
import os

__all__ = ["loopback_ray", "setup", "tune_gc_for_serving"]

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup(*, verbose: bool = False) -> None:
    """Logging (once per process: a process that configured it keeps its own) and the defaults
    that the GPU libraries read when they are imported."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=_LOG_FORMAT)
    # diffusers / transformers: no progress bars in logs, no tokenizer threads forked into workers.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def loopback_ray() -> None:
    """Keep a local Ray on 127.0.0.1 (Ray reads this when it picks the node address)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray._private.ray_constants as rc

    rc.ENABLE_RAY_CLUSTER = False


def tune_gc_for_serving() -> None:
    """After start-up: long-lived objects leave the GC's view, and young-generation collections
    run less often: fewer pauses while thousands of events a second go out to sockets."""
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
