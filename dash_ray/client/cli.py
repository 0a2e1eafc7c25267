"""The client's commands of `dash-ray`: submit, watch, status, jobs, queues, cancel, retry, download.

They talk to a running gateway (`--url` / `DASH_URL`, `--token` / `DASH_TOKEN`) through the
Python client. `--json` prints JSON for scripts. Exit codes: 0 done, 1 a waited or watched job
failed or was cancelled, 2 the server refused the request (or could not be reached).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Any

from dash_ray.models.images import is_image_url
from dash_ray.models.queues import QUEUE_TABLE, queue_def
from dash_ray.models.status import is_failure

__all__ = ["add_client_commands", "api_errors"]


def _client(args: argparse.Namespace) -> Any:
    import logging

    from dash_ray.client import Client

    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    return Client(args.url, args.token, retries=args.retries)


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    if args.json:
        print(json.dumps(data, default=str))
    else:
        print(text)


def _line(view: Any) -> str:
    note = view.error if is_failure(view.status) else view.message
    return f"{view.id}  {view.queue:<10} {view.status:<9} {view.progress:5.1f}%  {note or ''}".rstrip()


def _ended(views: list[Any]) -> int:
    return 0 if all(v.status == "completed" for v in views) else 1


def _settings(pairs: list[str] | None, **known: Any) -> dict[str, Any]:
    """`--set key=value` pairs (values parsed as JSON when they are) plus the named options."""
    out = {k: v for k, v in known.items() if v is not None}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"dash-ray: --set takes key=value, not {pair!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _submit_generation(c: Any, args: argparse.Namespace, options: dict[str, Any]) -> Any:
    settings = _settings(args.set, steps=args.steps, width=args.width, height=args.height, seed=args.seed,
                         numImages=args.num_images, model=args.model)
    return c.submit_generation(args.prompt, settings=settings, lora=args.lora, job_id=args.job_id, options=options)


def _submit_upscaling(c: Any, args: argparse.Namespace, options: dict[str, Any]) -> Any:
    return c.submit_upscaling(args.image, args.scale, args.model, job_id=args.job_id, options=options)


def _submit_training(c: Any, args: argparse.Namespace, options: dict[str, Any]) -> Any:
    settings = _settings(args.set, epochs=args.epochs, rank=args.rank, resolution=args.resolution,
                         seed=args.seed, baseModel=args.model)
    return c.submit_training(args.lora_id, args.prompt, args.images, settings=settings, priority=args.priority,
                             options={k: v for k, v in options.items() if k != "priority"})


def _submit_payload(c: Any, args: argparse.Namespace, options: dict[str, Any]) -> Any:
    """Any other queue of the table: the payload from --data and --set; its image fields (as the
    queue's definition names them) may be paths, uploaded first."""
    payload = _settings(args.set, **(json.loads(args.data) if args.data else {}))
    q = queue_def(args.queue)
    for name in q.image_fields:
        wire = q.payload.model_fields[name].alias or name
        value = payload.get(wire)
        if isinstance(value, str):
            payload[wire] = value if is_image_url(value) else c.upload(value)
        elif isinstance(value, list):
            payload[wire] = [c.upload(v) if isinstance(v, str) and not is_image_url(v) else v for v in value]
    if args.job_id:
        payload.setdefault(q.id_field, args.job_id)
    return c.submit(args.queue, payload, options)


# Queues with commands of their own; every other (non-test) queue of the table gets a generic one.
_SUBMITTERS = {"generation": _submit_generation, "upscaling": _submit_upscaling, "training": _submit_training}


def cmd_submit(_settings_obj: Any, args: argparse.Namespace) -> int:
    """Submit a job; with --wait, follow it to its end."""
    options: dict[str, Any] = {}
    if args.priority is not None:
        options["priority"] = args.priority
    if args.timeout_s is not None:
        options["timeoutS"] = args.timeout_s
    if args.start_by is not None:
        start_by: float | str = args.start_by
        with contextlib.suppress(ValueError):  # (else an ISO 8601 time)
            start_by = float(args.start_by)  # seconds from the submit
        options["startBy"] = start_by
    if args.cache:
        options["cache"] = True
    with _client(args) as c:
        handle = _SUBMITTERS.get(args.queue, _submit_payload)(c, args, options)
        if not args.wait:
            _print(args, handle.view.wire(), _line(handle.view))
            return 0
        view = handle.wait(progress=not args.json, raise_on_failure=False)
        _print(args, view.wire(), _line(view))
        return _ended([view])


def cmd_watch(_settings_obj: Any, args: argparse.Namespace) -> int:
    """Live progress bars until every job has ended (JSON lines of events with --json)."""
    with _client(args) as c:
        handles = [c.job(j) for j in args.job_ids]
        for h in handles:
            h.status()  # 404 for an unknown id, before any socket opens
        if args.json:
            for event in c.watch(handles):
                print(json.dumps(event.wire(exclude_none=True)), flush=True)
            views = [h.status() for h in handles]
        else:
            views = c.wait_all(handles, progress=True)
            for v in views:
                print(_line(v))
        return _ended(views)


def _job_command(method: str, doc: str) -> Any:
    """A command on one job id whose answer is the job's view: status, cancel, retry."""

    def command(_settings_obj: Any, args: argparse.Namespace) -> int:
        with _client(args) as c:
            view = getattr(c, method)(args.job_id)
            _print(args, view.wire(), _line(view))
        return 0

    command.__doc__ = doc
    return command


def cmd_jobs(_settings_obj: Any, args: argparse.Namespace) -> int:
    """Your jobs, newest first."""
    with _client(args) as c:
        views = list(c.jobs(queue=args.queue, status=args.status, limit=args.limit))
        _print(args, [v.wire() for v in views], "\n".join(_line(v) for v in views) or "no jobs")
    return 0


def cmd_queues(_settings_obj: Any, args: argparse.Namespace) -> int:
    """Each queue's counts, concurrency and GPU share."""
    with _client(args) as c:
        queues = c.queues()
        rows = [f"{q.name:<11} {'paused' if q.paused else 'running':<8} concurrency {q.concurrency}  "
                f"gpu {q.gpu_fraction:g}  " + " ".join(f"{k} {v}" for k, v in q.counts.items()) for q in queues]
        _print(args, [q.wire() for q in queues], "\n".join(rows))
    return 0


def _schedule_line(v: Any) -> str:
    rhythm = f"every {v.every:g}s" if v.every else f"cron '{v.cron}'" + (f" {v.tz}" if v.tz else "")
    nxt = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v.next_at)) if v.next_at else "-"
    return f"{v.name:<20} {v.queue:<11} {rhythm:<24} runs {v.runs:<6} next {nxt}"


def cmd_schedule(_settings_obj: Any, args: argparse.Namespace) -> int:
    """Add (or replace) a schedule, list them, or remove one."""
    with _client(args) as c:
        if args.action == "add":
            if (args.every is None) == (args.cron is None):
                raise SystemExit("dash-ray schedule add: give one of --every SECONDS or --cron PATTERN")
            payload = _settings(args.set, **(json.loads(args.data) if args.data else {}))
            options = {"priority": args.priority} if args.priority else None
            end_at: float | str | None = args.end_at
            with contextlib.suppress(ValueError):  # (else an ISO 8601 time)
                end_at = float(args.end_at) if args.end_at is not None else None  # seconds from now
            v = c.schedule(args.name, args.queue, payload, every=args.every, cron=args.cron, tz=args.tz,
                           end_at=end_at, limit=args.limit, options=options)
            _print(args, v.wire(), _schedule_line(v))
        elif args.action == "rm":
            v = c.unschedule(args.name)
            _print(args, v.wire(), f"removed {v.name}")
        else:
            views = c.schedules()
            _print(args, [v.wire() for v in views], "\n".join(_schedule_line(v) for v in views) or "no schedules")
    return 0


def cmd_download(_settings_obj: Any, args: argparse.Namespace) -> int:
    """Save a job's result files (waits for the job)."""
    with _client(args) as c:
        paths = c.job(args.job_id).download(args.dir)
        _print(args, [str(p) for p in paths], "\n".join(str(p) for p in paths))
    return 0


def add_client_commands(sub: Any, run: Any) -> None:
    """Add the client's subcommands to `dash-ray`'s parser; `run` wraps each to map errors to exit codes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None, help="gateway URL (default: $DASH_URL or http://127.0.0.1:8000)")
    common.add_argument("--token", default=None, help="API token (default: $DASH_TOKEN)")
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    common.add_argument("--retries", type=int, default=2, help="resend a rate-limited or unanswered submit (default 2)")

    submit = sub.add_parser("submit", help="submit a job (see `dash-ray submit QUEUE -h`)")
    queues = submit.add_subparsers(dest="queue", required=True)
    job_opts = argparse.ArgumentParser(add_help=False, parents=[common])
    job_opts.add_argument("--wait", action="store_true", help="follow the job to its end (exit 1 if it fails)")
    job_opts.add_argument("--priority", type=int, choices=(1, 2, 3), help="1 = high, 3 = low")
    job_opts.add_argument("--timeout-s", type=float, help="the job's run-time limit")
    job_opts.add_argument("--start-by", help="not started by then, it ends `expired`: seconds from now, or an ISO time")
    job_opts.add_argument("--cache", action="store_true",
                          help="answer with your completed run of the same payload (needs --seed), or follow a running one")
    job_opts.add_argument("--job-id", help="your id for the job (a retried submit never makes two)")
    job_opts.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other setting (JSON values)")

    gen = queues.add_parser("generation", parents=[job_opts], help="generate images from a prompt")
    gen.add_argument("prompt")
    gen.add_argument("--steps", type=int)
    gen.add_argument("--width", type=int)
    gen.add_argument("--height", type=int)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--num-images", type=int)
    gen.add_argument("--model")
    gen.add_argument("--lora", help="a trained LoRA's id")

    up = queues.add_parser("upscaling", parents=[job_opts], help="upscale an image (a path or a URL)")
    up.add_argument("image")
    up.add_argument("--scale", type=int, choices=(2, 4), default=2)
    up.add_argument("--model", help='"lanczos" (default) or a diffusers upscaler')

    train = queues.add_parser("training", parents=[job_opts], help="train a LoRA on images (paths or URLs)")
    train.add_argument("lora_id")
    train.add_argument("prompt")
    train.add_argument("images", nargs="+")
    train.add_argument("--epochs", type=int)
    train.add_argument("--rank", type=int)
    train.add_argument("--resolution", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--model", help="the base model")
    parsers = [gen, up, train]
    for q in QUEUE_TABLE.values():  # plug-in queues (DASH_QUEUE_PLUGINS) get a generic command
        if q.test_only or q.name in _SUBMITTERS:
            continue
        generic = queues.add_parser(q.name, parents=[job_opts], help=f"queue a {q.title} job")
        generic.add_argument("--data", help="the payload as JSON (camelCase fields); --set adds to it")
        parsers.append(generic)
    for p in parsers:
        p.set_defaults(fn=run(cmd_submit))

    watch = sub.add_parser("watch", parents=[common], help="live progress bars until the jobs end")
    watch.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    watch.set_defaults(fn=run(cmd_watch))
    for name, method, text in (("status", "get", "a job's state"), ("cancel", "cancel", "cancel a job"),
                               ("retry", "retry", "run a failed or cancelled job again")):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("job_id")
        p.set_defaults(fn=run(_job_command(method, text)))
    jobs = sub.add_parser("jobs", parents=[common], help="your jobs, newest first")
    jobs.add_argument("--queue")
    jobs.add_argument("--status")
    jobs.add_argument("--limit", type=int, default=20)
    jobs.set_defaults(fn=run(cmd_jobs))
    queues_p = sub.add_parser("queues", parents=[common], help="the queues and their counts")
    queues_p.set_defaults(fn=run(cmd_queues))
    sched = sub.add_parser("schedule", help="recurring jobs: add, ls, rm")
    actions = sched.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", parents=[common], help="run a job every N seconds or on a cron pattern")
    add.add_argument("name", help="your name for it (letters, digits, '_', '-'); the same name replaces it")
    add.add_argument("queue")
    add.add_argument("--data", help="the payload as JSON (camelCase fields), e.g. '{\"prompt\": \"a fox\"}'")
    add.add_argument("--set", action="append", metavar="KEY=VALUE", help="a payload field (JSON values)")
    add.add_argument("--every", type=float, help="seconds between runs")
    add.add_argument("--cron", help="a cron pattern (5 fields, or 6 with seconds first)")
    add.add_argument("--tz", help="the cron pattern's time zone (e.g. Europe/Paris)")
    add.add_argument("--end-at", help="when it stops (ISO 8601, or seconds from now)")
    add.add_argument("--limit", type=int, help="at most this many runs")
    add.add_argument("--priority", type=int, choices=(1, 2, 3))
    ls = actions.add_parser("ls", parents=[common], help="your schedules")
    rm = actions.add_parser("rm", parents=[common], help="stop a schedule")
    rm.add_argument("name")
    for p in (add, ls, rm):
        p.set_defaults(fn=run(cmd_schedule))
    dl = sub.add_parser("download", parents=[common], help="save a job's result files in DIR")
    dl.add_argument("job_id")
    dl.add_argument("dir")
    dl.set_defaults(fn=run(cmd_download))


def api_errors(fn: Any) -> Any:
    """Run a client command; a refused request prints the server's message and exits 2."""

    def wrapped(settings: Any, args: argparse.Namespace) -> int:
        from dash_ray.client.errors import ApiError

        try:
            return int(fn(settings, args))
        except ApiError as exc:
            if args.json:
                print(json.dumps({"error": {"status": exc.status, "code": exc.code, "message": exc.message}}))
            print(f"dash-ray: {exc}", file=sys.stderr)
            return 2
        except FileNotFoundError as exc:
            print(f"dash-ray: {exc}", file=sys.stderr)
            return 2

    return wrapped
