"""Traces of a job's life (OpenTelemetry): the submit request and the job's creation in the
gateway, its wait, the run handed to a worker and the result written in the consumer, the run
on the worker (with its model load and its phases, `Phases`), and each try of its webhooks,
all in one trace. The context travels in the job itself, as a W3C `traceparent` carrier in
BullMQ's job options (`opts.tm`, the key bullmq-otel uses), so a Node producer's trace continues
into dash-ray, and one that plain BullMQ tools made without one starts in the consumer.

Off unless configured, and then free: `tracer()` is None and the call sites do nothing else.
On with the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, read by `Settings`; the SDK reads the rest of the
`OTEL_*` family itself), exported over OTLP/HTTP by `opentelemetry-exporter-otlp-proto-http` (the `otel` extra); and/or
with `DASH_TRACE_FILE`: each process appends its finished spans to that file, one JSON object a
line (for a look without a collector, and for tests)."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from dash_ray.config import Settings

__all__ = ["Phases", "carrier", "configure", "parent", "phase_name", "record", "record_span", "shutdown", "span",
           "tracer"]

log = logging.getLogger(__name__)

_tracer: Any = None
_lock = threading.Lock()


def tracer() -> Any:
    """The process's tracer, or None when tracing is off."""
    return _tracer


def configure(service: str, settings: Settings) -> None:
    """Turn tracing on for this process if the settings ask for it (an OTLP endpoint, a trace
    file); once per process. A missing exporter package leaves OTLP off, with a warning."""
    global _tracer
    endpoint, trace_file = settings.otel_endpoint, settings.trace_file
    if not endpoint and not trace_file:
        return
    with _lock:
        if _tracer is not None:
            return
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": service, "process.pid": os.getpid()}))
        if trace_file:
            provider.add_span_processor(SimpleSpanProcessor(cast(Any, _FileExporter(trace_file))))  # (duck-typed)
        if endpoint:
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError:
                log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but opentelemetry-exporter-otlp-proto-http is not "
                            "installed (pip install 'dash-ray[otel]'): no spans are exported over OTLP")
                if not trace_file:
                    return  # nothing to export to: stays off
            else:  # (the endpoint as this deployment's settings give it, in every process alike)
                url = endpoint if endpoint.rstrip("/").endswith("/v1/traces") else endpoint.rstrip("/") + "/v1/traces"
                provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
        _tracer = provider.get_tracer("dash-ray")
        _tracer._provider = provider  # (for shutdown)


def shutdown() -> None:
    """Flush and stop this process's tracing (it is off after)."""
    global _tracer
    with _lock:
        if _tracer is None:
            return
        provider: Any = getattr(_tracer, "_provider", None)
        _tracer = None
    if provider is not None:
        provider.shutdown()


def carrier() -> str:
    """The current span's context as a JSON carrier (`{"traceparent": ...}`), for a job's `opts.tm`."""
    from opentelemetry.propagate import inject

    out: dict[str, str] = {}
    inject(out)
    return json.dumps(out, separators=(",", ":"))


def parent(tm: str | None) -> Any:
    """The context a job's carrier names (None: none, or not a carrier)."""
    if not tm:
        return None
    try:  # (whatever a job carries: a plain BullMQ producer's may be anything)
        fields = json.loads(tm)
        if not isinstance(fields, dict):
            return None
        from opentelemetry.propagate import extract

        return extract({str(k): str(v) for k, v in fields.items()})
    except Exception:
        return None


@contextmanager
def span(name: str, tm: str | None = None, kind: str = "INTERNAL", **attributes: Any) -> Iterator[Any]:
    """A span around a block (a child of the current one, or of the job's carrier `tm`); yields
    it. Only called when `tracer()` is not None."""
    from opentelemetry.trace import SpanKind

    with _tracer.start_as_current_span(name, context=parent(tm), kind=getattr(SpanKind, kind),
                                       attributes={k: v for k, v in attributes.items() if v is not None}) as s:
        yield s


def record(name: str, start_s: float, end_s: float, tm: str | None = None, **attributes: Any) -> str | None:
    """A span that already happened (from `start_s` to `end_s`, epoch seconds), a child of the
    job's carrier `tm`; returns its own carrier (the one given if tracing failed: it never fails
    a job). Only called when `tracer()` is not None."""
    return record_span(name, start_s, end_s, tm, attributes)


def record_span(name: str, start_s: float, end_s: float, tm: str | None, attributes: dict[str, Any], *,
                kind: str = "INTERNAL", error: str | None = None) -> str | None:
    """`record`, of another `kind` (an OpenTelemetry SpanKind's name: CLIENT for a call out), its
    status an error when `error` says why (None: unset)."""
    try:
        return _record(name, start_s, end_s, tm, kind, error, attributes)
    except Exception:
        log.debug("span %s not recorded", name, exc_info=True)
        return tm


def _record(name: str, start_s: float, end_s: float, tm: str | None, kind: str, error: str | None,
            attributes: dict[str, Any]) -> str:
    from opentelemetry import trace

    s = _tracer.start_span(name, context=parent(tm), kind=getattr(trace.SpanKind, kind), start_time=int(start_s * 1e9),
                           attributes={k: v for k, v in attributes.items() if v is not None})
    if error is not None:
        s.set_status(trace.Status(trace.StatusCode.ERROR, error))
    s.end(end_time=int(max(end_s, start_s) * 1e9))
    ctx = trace.set_span_in_context(s)
    from opentelemetry.propagate import inject

    out: dict[str, str] = {}
    inject(out, context=ctx)
    return json.dumps(out, separators=(",", ":"))


_WORD = re.compile(r"[A-Za-z][A-Za-z_-]{0,31}")


def phase_name(message: str, extra: dict[str, Any]) -> str:
    """The phase a progress report names: `epochs` for a report that counts epochs (training),
    `steps` for one that counts steps (denoising, upscaling passes), else the first word of its
    message (`loading`, `fetching`, `upscaling`...), lower-cased: few names, fit for span names."""
    if extra.get("epoch") is not None:
        return "epochs"
    if extra.get("step") is not None:
        return "steps"
    word = _WORD.search(message)
    return word.group(0).lower() if word else "progress"


class Phases:
    """The phases of one run on a worker, as its progress reports name them (`phase_name`): a
    phase begins at the first report that names it and ends when the next one begins, or the run
    ends. A report that says a step or an epoch is already done (count >= 1), with no phase
    before it, began with the run (the sleep runner's `step 1/2`); the time before a first report
    that starts its phase (a generation's `generating with ...`, after its model load) is in no
    phase. Kept by the worker's reporter while tracing is on only; at most `MAX` phases (a runner
    whose messages keep changing leaves the rest in the last)."""

    MAX = 64
    __slots__ = ("began", "marks")

    def __init__(self, began: float) -> None:
        self.began = began  # when the run began (epoch seconds)
        self.marks: list[tuple[str, float, str, float]] = []  # (name, start, its first message, progress)

    def note(self, progress: float, message: str, extra: dict[str, Any], at: float) -> None:
        """A progress report at `at` (epoch seconds)."""
        name = phase_name(message, extra)
        marks = self.marks
        if marks and (marks[-1][0] == name or len(marks) >= self.MAX):
            return
        done = (extra.get("epoch") or extra.get("step") or 0) >= 1
        marks.append((name, self.began if not marks and done else at, message[:200], float(progress)))

    def spans(self, end: float) -> list[tuple[str, float, float, dict[str, Any]]]:
        """(name, start, end, attributes) of each phase, the last one ending at `end` (the run's)."""
        out = []
        for i, (name, start, message, progress) in enumerate(self.marks):
            stop = self.marks[i + 1][1] if i + 1 < len(self.marks) else end
            out.append((name, start, max(start, stop), {"dash.message": message, "dash.progress": progress}))
        return out


class _FileExporter:
    """Appends finished spans to a file, one JSON object a line (whole lines: several processes
    may share the file)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        lines = []
        for s in spans:
            ctx, up = s.get_span_context(), s.parent
            lines.append(json.dumps({
                "name": s.name, "trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}",
                "parent_id": f"{up.span_id:016x}" if up is not None else None,
                "service": s.resource.attributes.get("service.name"), "pid": os.getpid(),
                "kind": s.kind.name, "status": s.status.status_code.name,
                "start": s.start_time / 1e9, "end": (s.end_time or s.start_time) / 1e9,
                "attributes": dict(s.attributes or {})}, default=str))
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
