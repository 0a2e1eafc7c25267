"""dash-ray command line: `up` (everything local), `token` (mint an API token), and the client's
commands (`submit`, `watch`, `status`, `jobs`, `queues`, `cancel`, `retry`, `download`)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from dash_ray import runtime
from dash_ray.config import Settings, load_settings
from dash_ray.errors import DashError

__all__ = ["main"]

log = logging.getLogger("dash_ray")


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    """Start Redis (embedded unless configured), a local Ray, the scheduler and the gateway."""
    import time

    from dash_ray.queues import EmbeddedRedis, redacted

    stop = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()

    # Before start-up too, so an early Ctrl-C still cleans up (re-armed below: Ray installs its own).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    t0 = time.monotonic()
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    settings.data_dir.chmod(0o700)  # jobs, results, the token secret and Redis's password: ours alone
    server = None
    url = settings.resolved_redis_url()
    if url is None:
        server = EmbeddedRedis(settings.data_dir / "redis", fsync=settings.redis_fsync,
                               maxmemory=settings.redis_maxmemory)
        url = server.start()
    try:
        import ray
        from ray import serve

        from dash_ray.app import build_app, node_gpus, run_gateway
        from dash_ray.gateway.auth import TokenAuth
        from dash_ray.scheduler.cluster import init_ray, record_local_ray, stop_recorded_ray
        from dash_ray.scheduler.resources import queue_specs

        specs = queue_specs(settings)
        ray_pids = settings.data_dir / "ray.pids"
        if not settings.ray_address:
            stop_recorded_ray(ray_pids)  # what a killed earlier run on this data dir left running
        resources = init_ray(settings, specs, num_gpus=None if settings.ray_address else node_gpus(settings, specs))
        if not settings.ray_address:
            record_local_ray(ray_pids)
        base = run_gateway(settings, build_app(settings, url, specs), "dash")
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
        token = TokenAuth.of(settings).mint(args.user)
        gpus = resources.get("GPU", 0)
        print(
            f"dash-ray is up in {time.monotonic() - t0:.1f}s\n"
            f"  API        {base}\n"
            f"  Docs       {base}/docs\n"
            f"  WebSocket  ws://{settings.host}:{settings.websocket_port}/ws?token=<token>\n"
            f"  Redis      {redacted(url)}{' (embedded, password in ' + str(server.data_dir / 'redis.password') + ')' if server else ''}\n"
            f"  Queues     " + ", ".join(f"{s.name} x{s.concurrency}" for s in specs) + f" on {gpus:g} GPU(s)\n"
            f"  Token for user {args.user!r}:\n{token}\n"
            f"Python client and CLI: export DASH_URL={base} DASH_TOKEN=<the token above>\n"
            "Press Ctrl-C to stop.",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
        print("dash-ray: stopping (running jobs get "
              f"{settings.drain_timeout_s:g}s to finish; waiting jobs stay queued)", flush=True)
        try:
            sup = serve.get_deployment_handle("SchedulerSupervisor", app_name="dash")
            sup.drain.remote(settings.drain_timeout_s).result(timeout_s=settings.drain_timeout_s + 30)
        except Exception as exc:
            log.warning("drain failed: %s", exc)
        serve.shutdown()
        ray.shutdown()
    finally:
        if server:
            server.stop()
    print("dash-ray: stopped", flush=True)
    return 0


def cmd_token(settings: Settings, args: argparse.Namespace) -> int:
    """Print an API token for a user."""
    from dash_ray.gateway.auth import TokenAuth

    ttl = int(args.ttl_h * 3600) if args.ttl_h else None
    try:
        print(TokenAuth.of(settings).mint(args.user, admin=args.admin, ttl_s=ttl))
    except ValueError as exc:
        print(f"dash-ray: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `dash-ray`."""
    p = argparse.ArgumentParser(prog="dash-ray", description="Ray-based GPU job scheduler for AI image services.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start Redis, Ray, the scheduler and the gateway locally")
    up.add_argument("--user", default="demo", help="user of the printed token (default: demo)")
    up.set_defaults(fn=cmd_up)
    tok = sub.add_parser("token", help="mint an API token")
    tok.add_argument("--user", required=True)
    tok.add_argument("--admin", action="store_true", help="with the admin role (pause/resume, see all jobs)")
    tok.add_argument("--ttl-h", type=float, default=None, help="hours until it expires (default: settings)")
    tok.set_defaults(fn=cmd_token)
    from dash_ray.client.cli import add_client_commands, api_errors

    add_client_commands(sub, api_errors)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dash-ray` console script."""
    args = build_parser().parse_args(argv)
    runtime.setup(verbose=args.verbose)
    try:
        settings = load_settings()
        fn: Any = args.fn
        return int(fn(settings, args) or 0)
    except DashError as exc:
        print(f"dash-ray: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
