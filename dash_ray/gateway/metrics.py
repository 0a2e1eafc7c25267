"""Prometheus text exposition: queue depths, job durations and worker starts (from Redis),
per-replica counters."""

from __future__ import annotations

from dataclasses import dataclass, field

from dash_ray.queues.lifecycle import DURATION_BUCKETS

__all__ = ["ReplicaMetrics", "render"]


@dataclass
class ReplicaMetrics:
    """Counters of one gateway replica."""

    replica: str
    events_sent: int = 0
    open_sockets: int = 0
    requests: dict[str, int] = field(default_factory=dict)
    webhooks: dict[str, int] = field(default_factory=dict)  # sends by outcome: delivered, retried, dropped


def _line(name: str, labels: dict[str, str], value: float) -> str:
    lab = ",".join(f'{k}="{v}"' for k, v in labels.items())
    text = str(value) if isinstance(value, int) else f"{value:.12g}"  # (:g would round a large counter to 6 digits)
    return f"{name}{{{lab}}} {text}" if lab else f"{name} {text}"


def render(counts: dict[str, dict[str, int]], durations: dict[str, dict[str, str]], replica: ReplicaMetrics,
           sizing: dict[str, tuple[float, dict[str, tuple[str, int]]]] | None = None, *,
           open_streams: int = 0, bytes_kept: list[tuple[str, int]] | None = None,
           cold: dict[str, dict[str, dict[str, float]]] | None = None,
           min_workers: dict[str, int] | None = None,
           gpu_users: dict[str, list[tuple[str, float]]] | None = None) -> str:
    """The metrics page: counts[queue][state], durations[queue] (our Redis histogram hash),
    sizing[queue] (the GPU share its workers ask for, the measured peaks by job shape), the
    replica's open event streams, the users who keep the most bytes in Redis, cold[queue][phase]
    (its workers' starts: count, sum and max seconds, `board.cold_starts`) and min_workers[queue]
    (the warm workers it keeps), gpu_users[queue] (the users with the most GPU time there)."""
    out = [
        "# HELP dash_jobs Jobs per queue and state.",
        "# TYPE dash_jobs gauge",
    ]
    for queue, states in counts.items():
        for state, n in states.items():
            out.append(_line("dash_jobs", {"queue": queue, "state": state}, n))
    out += ["# HELP dash_queue_depth Jobs waiting to run.", "# TYPE dash_queue_depth gauge"]
    for queue, states in counts.items():
        out.append(_line("dash_queue_depth", {"queue": queue}, states.get("waiting", 0)))
    out += ["# HELP dash_job_duration_seconds Run time of completed attempts.",
            "# TYPE dash_job_duration_seconds histogram"]
    for queue, h in durations.items():
        cum = 0
        for b in DURATION_BUCKETS:
            cum += int(h.get(f"le_{b:g}", 0))
            out.append(_line("dash_job_duration_seconds_bucket", {"queue": queue, "le": f"{b:g}"}, cum))
        cum += int(h.get("le_inf", 0))
        out.append(_line("dash_job_duration_seconds_bucket", {"queue": queue, "le": "+Inf"}, cum))
        out.append(_line("dash_job_duration_seconds_sum", {"queue": queue}, float(h.get("sum", 0))))
        out.append(_line("dash_job_duration_seconds_count", {"queue": queue}, cum))
    out += ["# HELP dash_jobs_ended_total Jobs that ended, by final status (completed, failed, cancelled, expired).",
            "# TYPE dash_jobs_ended_total counter"]
    for queue, h in durations.items():
        for name, count in sorted(h.items()):
            if name.startswith("ended:"):
                out.append(_line("dash_jobs_ended_total", {"queue": queue, "status": name[6:]}, int(count)))
    out += ["# HELP dash_gpu_seconds_total GPU time charged to jobs (GPU share x seconds; the usage ledger).",
            "# TYPE dash_gpu_seconds_total counter"]
    for queue, h in durations.items():
        out.append(_line("dash_gpu_seconds_total", {"queue": queue}, float(h.get("gpuS", 0.0))))
    if gpu_users is not None:
        out += ["# HELP dash_user_gpu_seconds_total GPU time charged to a user's jobs (the users with the most, "
                "DASH_METRICS_USERS per queue).", "# TYPE dash_user_gpu_seconds_total counter"]
        for queue, rows in gpu_users.items():
            out += [_line("dash_user_gpu_seconds_total", {"queue": queue, "user": u}, v) for u, v in rows]
    out += ["# HELP dash_worker_gpu_fraction GPU share a queue's workers ask for (sized by measured memory).",
            "# TYPE dash_worker_gpu_fraction gauge"]
    for queue, (fraction, _) in (sizing or {}).items():
        out.append(_line("dash_worker_gpu_fraction", {"queue": queue}, fraction))
    out += ["# HELP dash_job_peak_memory_bytes Largest peak memory of a job shape (kind: cuda or rss).",
            "# TYPE dash_job_peak_memory_bytes gauge"]
    for queue, (_, peaks) in (sizing or {}).items():
        for shape, (kind, nbytes) in sorted(peaks.items()):
            out.append(_line("dash_job_peak_memory_bytes", {"queue": queue, "shape": shape, "kind": kind}, nbytes))
    out += ["# HELP dash_worker_cold_start_seconds Time a new worker took to start, by phase (readyS: all of it).",
            "# TYPE dash_worker_cold_start_seconds summary"]
    for queue, phases in (cold or {}).items():
        for phase, t in sorted(phases.items()):
            lab = {"queue": queue, "phase": phase}
            out.append(_line("dash_worker_cold_start_seconds_sum", lab, float(t.get("sum", 0.0))))
            out.append(_line("dash_worker_cold_start_seconds_count", lab, int(t.get("count", 0))))
    out += ["# HELP dash_worker_cold_start_max_seconds Longest start of a worker, by phase.",
            "# TYPE dash_worker_cold_start_max_seconds gauge"]
    for queue, phases in (cold or {}).items():
        for phase, t in sorted(phases.items()):
            out.append(_line("dash_worker_cold_start_max_seconds", {"queue": queue, "phase": phase},
                             float(t.get("max", 0.0))))
    out += ["# HELP dash_queue_min_workers Warm workers a queue keeps (DASH_<QUEUE>_MIN_WORKERS).",
            "# TYPE dash_queue_min_workers gauge"]
    for queue, n in (min_workers or {}).items():
        out.append(_line("dash_queue_min_workers", {"queue": queue}, n))
    r = {"replica": replica.replica}
    out += ["# HELP dash_ws_events_sent_total Events sent to sockets by this replica.",
            "# TYPE dash_ws_events_sent_total counter",
            _line("dash_ws_events_sent_total", r, replica.events_sent),
            "# HELP dash_ws_open_sockets Open sockets on this replica.",
            "# TYPE dash_ws_open_sockets gauge",
            _line("dash_ws_open_sockets", r, replica.open_sockets),
            "# HELP dash_sse_open_streams Open event streams (SSE) on this replica.",
            "# TYPE dash_sse_open_streams gauge",
            _line("dash_sse_open_streams", r, open_streams),
            "# HELP dash_user_bytes_kept Bytes a user's jobs keep in Redis (the users who keep the most).",
            "# TYPE dash_user_bytes_kept gauge",
            *(_line("dash_user_bytes_kept", {"user": user}, n) for user, n in bytes_kept or []),
            "# HELP dash_http_requests_total Requests by route on this replica.",
            "# TYPE dash_http_requests_total counter"]
    for route, n in sorted(replica.requests.items()):
        out.append(_line("dash_http_requests_total", {**r, "route": route}, n))
    out += ["# HELP dash_webhook_sends_total Webhook sends by this replica, by outcome.",
            "# TYPE dash_webhook_sends_total counter"]
    for outcome in ("delivered", "retried", "dropped"):
        out.append(_line("dash_webhook_sends_total", {**r, "outcome": outcome}, replica.webhooks.get(outcome, 0)))
    return "\n".join(out) + "\n"
