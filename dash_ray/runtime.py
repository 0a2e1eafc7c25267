"""Process-wide setup, in one place: logging, library defaults, Ray's address, the GC.

Entry points call `setup()`: the CLI, each Ray actor (queue consumer, GPU worker) and each
gateway replica. Nothing else in dash-ray changes process-wide state.
"""

from __future__ import annotations

import gc
import logging
import os
import re

__all__ = ["hide_credentials_in_access_logs", "loopback_ray", "setup", "tune_gc_for_serving"]

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


_CREDENTIAL = re.compile(r"([?&](?:token|ticket|sig)=)[^&\s]*", re.IGNORECASE)


class _HideCredentials(logging.Filter):
    """Rewrites the query values of `token`, `ticket` and `sig` in an access log line to `***`
    (uvicorn's access records carry the path with its query in their args)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, str) and "=" in a for a in record.args):
            record.args = tuple(_CREDENTIAL.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str) and "=" in record.msg:
            record.msg = _CREDENTIAL.sub(r"\1***", record.msg)
        return True


def hide_credentials_in_access_logs() -> None:
    """Keep credentials that clients put in URLs (`?token=`, `?ticket=`, signed links' `sig`) out
    of the access log of a server that logs query strings (uvicorn's does). Idempotent."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _HideCredentials) for f in access.filters):
        access.addFilter(_HideCredentials())
