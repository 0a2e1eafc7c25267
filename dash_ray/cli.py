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
    """Start Redis (embedded unless configured), a local Ray (or join one: --address), the
    scheduler and the gateway."""
    import time

    from dash_ray.errors import ConfigError
    from dash_ray.queues import EmbeddedRedis, redacted

    if args.address:
        settings = settings.model_copy(update={"ray_address": args.address})
    joined = bool(settings.ray_address)
    if joined and not settings.redis_configured:
        raise ConfigError("joining a Ray cluster needs REDIS_URL (or REDIS_HOST) naming a Redis that every "
                          "node can reach: the embedded one listens on 127.0.0.1 (cluster.yaml runs one on the head)")
    if args.detach and not joined:
        raise ConfigError("--detach leaves the app running on a cluster: use it with --address")

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
                               maxmemory=settings.redis_maxmemory, server=settings.redis_server)
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
        if not joined:
            stop_recorded_ray(ray_pids)  # what a killed earlier run on this data dir left running
        resources = init_ray(settings, specs, num_gpus=None if joined else node_gpus(settings, specs))
        if not joined:
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
            f"  Ray        {settings.ray_address or 'local'}\n"
            f"  Queues     " + ", ".join(f"{s.name} x{s.concurrency}" for s in specs) + f" on {gpus:g} GPU(s)"
            + (" (the autoscaler adds GPU nodes for a backlog)" if joined and settings.autoscale else "") + "\n"
            f"  Token for user {args.user!r}:\n{token}\n"
            f"Python client and CLI: export DASH_URL={base} DASH_TOKEN=<the token above>\n"
            + ("Deployed as Serve app 'dash'; it keeps running (stop: dash-ray drain, then serve delete dash)."
               if args.detach else "Press Ctrl-C to stop."),
            flush=True,
        )
        if args.detach:
            return 0
        while not stop.wait(0.5):
            pass
        print("dash-ray: stopping (running jobs get "
              f"{settings.drain_timeout_s:g}s to finish; waiting jobs stay queued)", flush=True)
        try:
            sup = serve.get_deployment_handle("SchedulerSupervisor", app_name="dash")
            sup.drain.remote(settings.drain_timeout_s).result(timeout_s=settings.drain_timeout_s + 30)
        except Exception as exc:
            log.warning("drain failed: %s", exc)
        if joined:
            serve.delete("dash")  # only ours: other Serve apps of the cluster keep running
        else:
            serve.shutdown()
        ray.shutdown()
    finally:
        if server:
            server.stop()
    print("dash-ray: stopped", flush=True)
    return 0


def cmd_drain(settings: Settings, args: argparse.Namespace) -> int:
    """Drain the scheduler of the `dash` Serve app on a cluster: running jobs finish (bounded),
    waiting ones stay in Redis for the next deployment."""
    import ray
    from ray import serve

    from dash_ray.scheduler.cluster import NAMESPACE

    timeout_s = settings.drain_timeout_s if args.timeout_s is None else args.timeout_s
    ray.init(address=args.address or settings.ray_address or "auto", namespace=NAMESPACE, log_to_driver=False)
    try:
        sup = serve.get_deployment_handle("SchedulerSupervisor", app_name="dash")
        out = sup.drain.remote(timeout_s).result(timeout_s=timeout_s + 30)
    finally:
        ray.shutdown()
    for queue, stats in out.items():
        print(f"{queue}: {stats}")
    return 0


def cmd_redis(settings: Settings, args: argparse.Namespace) -> int:
    """Run the embedded Redis in the foreground for a cluster: also on `--host` (the head's private
    address), password-protected, append-only; `--env-file` gets `REDIS_URL=...` (0600)."""
    import os

    from dash_ray.queues import EmbeddedRedis

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    data_dir = args.data_dir or settings.data_dir / "redis"
    server = EmbeddedRedis(data_dir, args.port, host=args.host, fsync=settings.redis_fsync,
                           maxmemory=settings.redis_maxmemory, server=settings.redis_server)
    url = server.start()
    try:
        if args.env_file:
            fd = os.open(args.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"REDIS_URL={url}\n")
        print(f"dash-ray: Redis on {server.display_url} (password in {server.data_dir / 'redis.password'})",
              flush=True)
        while not stop.wait(0.5):
            if server.proc is not None and server.proc.poll() is not None:
                print("dash-ray: redis-server exited", file=sys.stderr)
                return 1
    finally:
        server.stop()
    return 0


def cmd_token(settings: Settings, args: argparse.Namespace) -> int:
    """Print an API token for a user."""
    from dash_ray.gateway.auth import TokenAuth

    ttl = int(args.ttl_h * 3600) if args.ttl_h else None
    try:
        print(TokenAuth.of(settings).mint(args.user, admin=args.admin, ttl_s=ttl, weight=args.weight, org=args.org))
    except ValueError as exc:
        print(f"dash-ray: {exc}", file=sys.stderr)
        return 2
    _audit_token(settings, args.user, role="admin" if args.admin else "user", ttl_s=ttl, weight=args.weight,
                 org=args.org)
    return 0


def _audit_token(settings: Settings, user: str, **detail: object) -> None:
    """Record the token's issuance in the audit trail, if Redis is configured and answers within
    a few seconds (a token minted offline is not recorded: the secret alone mints one)."""
    url = settings.resolved_redis_url()
    if not url:
        return
    import asyncio
    import getpass
    import socket

    from dash_ray.queues.audit import AuditLog
    from dash_ray.queues.connection import connect
    from dash_ray.queues.keys import Keys

    async def record() -> None:
        r = connect(url, max_connections=1)  # (the one connection module: a sentinel URL works too)
        try:
            await AuditLog(r, Keys(settings.key_prefix), max_len=settings.audit_max_entries).record(
                f"cli:{getpass.getuser()}", "token.issue", user, admin=True, owner=user, ip=socket.gethostname(),
                **detail)
        finally:
            await r.aclose()

    try:
        asyncio.run(asyncio.wait_for(record(), 8))
    except Exception as exc:  # the token is printed; only its record is missing
        print(f"dash-ray: the token's issuance was not recorded in the audit trail ({type(exc).__name__})",
              file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `dash-ray`."""
    p = argparse.ArgumentParser(prog="dash-ray", description="Ray-based GPU job scheduler for AI image services.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start Redis, Ray, the scheduler and the gateway locally")
    up.add_argument("--user", default="demo", help="user of the printed token (default: demo)")
    up.add_argument("--address", default=None,
                    help="deploy onto this Ray cluster ('auto': the one this node belongs to; or DASH_RAY_ADDRESS)")
    up.add_argument("--detach", action="store_true", help="with --address: deploy, then exit, leaving it running")
    up.set_defaults(fn=cmd_up)
    rd = sub.add_parser("redis", help="run a password-protected, append-only Redis for a cluster's head")
    rd.add_argument("--host", default="127.0.0.1", help="an address to listen on besides 127.0.0.1 (the head's private one)")
    rd.add_argument("--port", type=int, default=6379)
    rd.add_argument("--data-dir", default=None, help="default: <DASH_DATA_DIR>/redis")
    rd.add_argument("--env-file", default=None, help="write REDIS_URL=... here (mode 0600) once it answers")
    rd.set_defaults(fn=cmd_redis)
    dr = sub.add_parser("drain", help="on a cluster: stop taking jobs, let running ones finish (before an upgrade)")
    dr.add_argument("--address", default=None, help="the Ray cluster (default: DASH_RAY_ADDRESS, else 'auto')")
    dr.add_argument("--timeout-s", type=float, default=None, help="how long running jobs get (default: settings)")
    dr.set_defaults(fn=cmd_drain)
    tok = sub.add_parser("token", help="mint an API token")
    tok.add_argument("--user", required=True)
    tok.add_argument("--admin", action="store_true", help="with the admin role (pause/resume, see all jobs)")
    tok.add_argument("--ttl-h", type=float, default=None, help="hours until it expires (default: settings)")
    tok.add_argument("--weight", type=float, default=None,
                     help="the user's fair share of each queue, relative to others' (default 1, DASH_USER_WEIGHTS)")
    tok.add_argument("--org", default=None,
                     help="the user's group: its members share the group's GPU budget (PUT /v1/budgets/org:<name>)")
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
