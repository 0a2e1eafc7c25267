"""dash-ray command line: up | token | submit | watch | status | cancel."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from dash_ray.config import Settings, load_settings
from dash_ray.errors import DashError

__all__ = ["main"]

log = logging.getLogger("dash_ray")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    """Start everything locally and serve until Ctrl-C or SIGTERM."""
    from dash_ray.queues import EmbeddedRedis

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server = None
    url = settings.resolved_redis_url()
    if url is None:
        server = EmbeddedRedis(settings.data_dir / "redis")
        url = server.start()
    try:
        print(f"dash-ray: redis at {url}", flush=True)
        stop.wait()
    finally:
        if server:
            server.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `dash-ray`."""
    p = argparse.ArgumentParser(prog="dash-ray", description="Ray-based GPU job scheduler for AI image services.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start Redis, Ray, the scheduler and the gateway locally")
    up.set_defaults(fn=cmd_up)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dash-ray` console script."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        settings = load_settings()
        fn: Any = args.fn
        return int(fn(settings, args) or 0)
    except DashError as exc:
        print(f"dash-ray: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
