"""The queue table: every queue defined once, by one `QueueDef` row.

A queue is its payload model (models/payloads.py), its runner (a `dash_ray.runners.Runner`,
imported only by a worker) and one row here, which declares everything the rest of the system
asks of a queue: default limits (settings `DASH_<QUEUE>_CONCURRENCY`, ...), the cost rule for
ETAs and memory sizing, the model a payload needs (model affinity), which payload fields hold
images (checked at submit), per-queue submission limits, and its defaults for GPU arbitration.
Settings, the gateway's routes and policy, the job store, the scheduler and the client read the
table; nothing else names a queue.

More queues plug in without editing this file: `DASH_QUEUE_PLUGINS=module:NAME,...` (read by
config.py before the settings are built) or `load_queue_plugins(...)` names `QueueDef`s defined
elsewhere. A definition sent to another process (a Ray actor given its queue) registers itself
there when it is unpickled, so every process that serves a queue knows it.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterable
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from dash_ray.errors import InvalidPayload, UnknownQueue
from dash_ray.models.cost import (
    CostRule,
    FamilyRule,
    generation_cost,
    generation_family,
    seconds_cost,
    training_cost,
    training_family,
    upscaling_cost,
)
from dash_ray.models.options import JobOptions
from dash_ray.models.payloads import GenerationJob, JobPayload, SleepJob, TrainingJob, UpscalingJob
from dash_ray.runners import RunnerSpec

if TYPE_CHECKING:
    from dash_ray.config import Settings

__all__ = [
    "PLUGINS_ENV",
    "QUEUES",
    "QUEUE_TABLE",
    "BatchRule",
    "QueueDef",
    "bad_field",
    "generation_batch_key",
    "load_queue_plugins",
    "no_model",
    "parse_options",
    "parse_payload",
    "payload_model",
    "queue_def",
    "register_queue",
    "served_queues",
    "validation_errors",
]

PLUGINS_ENV = "DASH_QUEUE_PLUGINS"

# (payload, settings) -> None, or InvalidPayload for a submission over a limit of the queue's own.
LimitsCheck = Callable[[Any, "Settings"], None]

# (payload as a wire dict) -> None: the job runs alone; or (key, rows): jobs with equal keys may
# share one forward pass on one worker, `rows` being the samples the job adds to it.
BatchRule = Callable[[dict[str, Any]], "tuple[str, int] | None"]


def no_model(data: dict[str, Any]) -> str | None:
    """A queue whose jobs need no particular model (no model affinity)."""
    return None


@dataclass(frozen=True)
class QueueDef:
    """One queue, as declared and (through `Settings.queue`) as configured and scheduled.

    Positional: name, title, payload model, runner (a `RunnerSpec`: `module:Class`), default
    worker slots per GPU node, GPU share of one worker, run-time limit. Keyword-only: `cost`, the
    rule sizing a job (required: `models.cost.flat_cost` for "all alike"), and the optional
    behaviour below, each with a default that means "nothing special".
    """

    name: str
    title: str
    payload: type[JobPayload]
    runner: RunnerSpec
    concurrency: int
    gpu_fraction: float
    timeout_s: float  # an attempt running longer is stopped (its worker killed) and retried
    _: KW_ONLY
    cost: CostRule
    # Shapes that cost alike per unit x scale (models.cost.FamilyRule): a new shape's ETA from its family's.
    cost_family: FamilyRule | None = None
    model_of: Callable[[dict[str, Any]], str | None] = no_model  # the model a payload (wire dict) needs
    adapter_of: Callable[[dict[str, Any]], str | None] = no_model  # its adapter (`lora:<user>/<id>`), if any
    image_fields: tuple[str, ...] = ()  # payload fields (snake_case) holding image references
    limits: LimitsCheck | None = None  # the queue's own limits on a submission (compute per job)
    priority_share: bool = False  # a non-admin's priority-1 job counts against DASH_HIGH_PRIORITY_PER_USER
    preemptible: bool = False  # in DASH_PREEMPTIBLE_QUEUES by default: yields its GPU at checkpoints
    preempts: int = 0  # > 0: in DASH_PREEMPT_FOR by default (in this order): its starvation makes others yield
    test_only: bool = False  # served only with DASH_ENABLE_SLEEP_QUEUE (tests, benchmarks)
    max_workers: int = 64  # on the whole cluster
    num_cpus: float = 0.0  # CPUs one worker reserves
    worker_env: dict[str, str] = field(default_factory=dict)
    # Batched runs (models.queues.BatchRule): compatible jobs at the head of the queue run together
    # in one pass of `Runner.run_batch`, up to `max_batch` rows (DASH_<QUEUE>_MAX_BATCH).
    batch: BatchRule | None = None
    max_batch: int = 1
    min_workers: int = 0  # warm workers kept per queue (DASH_<QUEUE>_MIN_WORKERS)

    def __post_init__(self) -> None:
        if isinstance(self.runner, str):  # `module:Class` alone is accepted too
            object.__setattr__(self, "runner", RunnerSpec(self.runner))
        if not callable(self.cost):
            raise TypeError(f"queue {self.name!r}: cost must be a rule (models.cost.flat_cost: all jobs alike)")
        for name in self.image_fields:
            if name not in self.payload.model_fields:
                raise TypeError(f"queue {self.name!r}: image field {name!r} is not a field of {self.payload.__name__}")

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Unpickled in another process (a Ray actor given its queue): the table there learns it.
        self.__dict__.update(state)
        QUEUE_TABLE.setdefault(self.name, self)

    # --- as the scheduler runs it ---
    @property
    def resource(self) -> str:
        """The custom Ray resource counting this queue's worker slots (`dash_<queue>`)."""
        return f"dash_{self.name}"

    def bundle(self) -> dict[str, float]:
        """The resources one worker takes: what the autoscaler must find room for."""
        out = {self.resource: 1.0}
        if self.gpu_fraction:
            out["GPU"] = self.gpu_fraction
        if self.num_cpus:
            out["CPU"] = self.num_cpus
        return out

    def actor_options(self) -> dict[str, Any]:
        """Ray options of one worker actor: its GPU share plus one unit of the queue's resource."""
        opts: dict[str, Any] = {
            "num_cpus": self.num_cpus,
            "num_gpus": self.gpu_fraction,
            "resources": {self.resource: 1},
            "max_restarts": 0,
        }
        if self.worker_env:
            opts["runtime_env"] = {"env_vars": dict(self.worker_env)}
        return opts

    # --- what the gateway asks of a payload ---
    def image_refs(self, payload: JobPayload) -> list[tuple[str, str]]:
        """(wire field, reference) of each image a payload names: `imageUrl`, `imageUrls.0`, ..."""
        out: list[tuple[str, str]] = []
        for name in self.image_fields:
            wire = self.payload.model_fields[name].alias or name
            value = getattr(payload, name, None)
            if isinstance(value, str):
                out.append((wire, value))
            elif isinstance(value, list | tuple):
                out.extend((f"{wire}.{i}", str(v)) for i, v in enumerate(value))
        return out

    def affinity(self, data: dict[str, Any]) -> list[str]:
        """What a worker may already hold for this job, best first: its adapter, then its model."""
        return [name for name in (self.adapter_of(data), self.model_of(data)) if name]

    def batch_of(self, data: dict[str, Any]) -> tuple[str, int] | None:
        """A job's batch key and rows (None: it runs alone, also when the queue batches nothing)."""
        if self.batch is None or self.max_batch <= 1:
            return None
        try:
            return self.batch(data)
        except (ValidationError, TypeError, ValueError):
            return None  # a payload the runner will reject: alone, so it fails alone

    @property
    def id_field(self) -> str:
        """The payload's own job id field on the wire (`jobId`, `loraId`)."""
        name = self.payload.id_field
        return self.payload.model_fields[name].alias or name


def bad_field(field_name: str, message: str) -> InvalidPayload:
    """A 422 naming one payload field."""
    return InvalidPayload(f"invalid payload: {field_name}: {message}",
                          errors=[{"field": field_name, "message": message}])


# --- the built-in queues' rules ---
def _named(value: Any) -> str | None:
    return str(value) if value else None


def _settings_of(data: dict[str, Any]) -> dict[str, Any]:
    raw = data.get("settings")
    return raw if isinstance(raw, dict) else {}


def _generation_model(data: dict[str, Any]) -> str | None:
    return _named(_settings_of(data).get("model"))


def _training_model(data: dict[str, Any]) -> str | None:
    return _named(_settings_of(data).get("baseModel"))


def _upscaling_model(data: dict[str, Any]) -> str | None:
    return _named(data.get("model"))


def _generation_adapter(data: dict[str, Any]) -> str | None:
    lora = _settings_of(data).get("loraId")
    return f"lora:{data.get('userId')}/{lora}" if lora else None


def generation_batch_key(g: GenerationJob) -> str:
    """What generation jobs sharing one forward pass have in common: everything but prompts, seeds
    and `numImages`: the model, the LoRA (its owner, id and weight), size, steps and guidance."""
    s = g.settings
    lora = [g.user_id, s.lora_id, s.lora_weight] if s.lora_id else None
    return json.dumps([s.model or "", s.width, s.height, s.steps, s.guidance_scale, lora], separators=(",", ":"))


def _generation_batch(data: dict[str, Any]) -> tuple[str, int]:
    g = GenerationJob.model_validate(data)
    return generation_batch_key(g), g.settings.num_images


def _generation_limits(p: GenerationJob, s: Settings) -> None:
    g = p.settings
    mpx_steps = g.steps * g.width * g.height * g.num_images / 1e6
    if mpx_steps > s.max_generation_mpx_steps:
        raise bad_field("settings", f"steps x width x height x numImages is {mpx_steps:.0f} megapixel-steps; "
                                    f"at most {s.max_generation_mpx_steps:g} (DASH_MAX_GENERATION_MPX_STEPS)")


def _training_limits(p: TrainingJob, s: Settings) -> None:
    t = p.settings
    mpx_epochs = t.epochs * len(p.image_urls) * t.resolution ** 2 / 1e6
    if mpx_epochs > s.max_training_mpx_epochs:
        raise bad_field("settings", f"epochs x images x resolution^2 is {mpx_epochs:.0f} megapixel-epochs; "
                                    f"at most {s.max_training_mpx_epochs:g} (DASH_MAX_TRAINING_MPX_EPOCHS)")
    if t.sample_every:  # samples are generations: they count against the generation ceiling
        samples = t.epochs // t.sample_every + 1
        mpx_steps = samples * t.sample_steps * t.resolution ** 2 / 1e6
        if mpx_steps > s.max_generation_mpx_steps:
            raise bad_field("settings.sampleEvery", f"the samples are {samples} x sampleSteps x resolution^2 = "
                                                    f"{mpx_steps:.0f} megapixel-steps; at most "
                                                    f"{s.max_generation_mpx_steps:g} (DASH_MAX_GENERATION_MPX_STEPS)")


QUEUE_TABLE: dict[str, QueueDef] = {q.name: q for q in (
    QueueDef("training", "LoRA training", TrainingJob, RunnerSpec("dash_ray.workers.training:TrainingRunner"),
             1, 1.0, timeout_s=6 * 3600, cost=training_cost, cost_family=training_family, model_of=_training_model,
             image_fields=("image_urls",), limits=_training_limits, priority_share=True, preemptible=True),
    QueueDef("upscaling", "image upscaling", UpscalingJob, RunnerSpec("dash_ray.workers.upscaling:UpscalingRunner"),
             3, 0.33, timeout_s=600, cost=upscaling_cost, model_of=_upscaling_model,
             image_fields=("image_url",), preempts=2),
    QueueDef("generation", "image generation", GenerationJob, RunnerSpec("dash_ray.workers.generation:GenerationRunner"),
             5, 0.2, timeout_s=600, cost=generation_cost, cost_family=generation_family, model_of=_generation_model,
             adapter_of=_generation_adapter, limits=_generation_limits, preempts=1, batch=_generation_batch, max_batch=8),
    QueueDef("sleep", "sleep (tests and benchmarks)", SleepJob, RunnerSpec("dash_ray.scheduler.sleep:SleepRunner"),
             5, 0.2, timeout_s=600, cost=seconds_cost, test_only=True),
)}

# The built-in queues a deployment serves (the test-only ones are added by a setting).
QUEUES: tuple[str, ...] = tuple(q.name for q in QUEUE_TABLE.values() if not q.test_only)


def served_queues(test_queues: bool = False) -> tuple[str, ...]:
    """The table's queues a deployment serves (with `test_queues`, the test-only ones too), plug-ins included."""
    return tuple(q.name for q in QUEUE_TABLE.values() if test_queues or not q.test_only)


def register_queue(q: QueueDef) -> QueueDef:
    """Add a queue definition to the table (again: no change); another queue of its name: ValueError."""
    old = QUEUE_TABLE.get(q.name)
    if old is not None and old is not q and old != q:
        raise ValueError(f"a queue named {q.name!r} is already defined")
    QUEUE_TABLE[q.name] = q
    return q


def load_queue_plugins(refs: str | Iterable[str]) -> list[QueueDef]:
    """Import the queue definitions named `module:NAME` (a QueueDef or a list of them; a string
    may name several, separated by commas) and add them to the table. A plug-in module imports
    `dash_ray.models` and `dash_ray.runners` only (settings are built after it loads)."""
    items = refs.split(",") if isinstance(refs, str) else list(refs)
    added: list[QueueDef] = []
    for ref in (r.strip() for r in items):
        if not ref:
            continue
        module, sep, name = ref.partition(":")
        if not sep or not module or not name:
            raise ValueError(f"a queue plug-in is module:NAME, not {ref!r}")
        obj = getattr(importlib.import_module(module), name)
        for q in obj if isinstance(obj, list | tuple) else [obj]:
            if not isinstance(q, QueueDef):
                raise TypeError(f"{ref} is not a QueueDef")
            added.append(register_queue(q))
    return added


def queue_def(name: str) -> QueueDef:
    """The table row of a queue, or UnknownQueue."""
    q = QUEUE_TABLE.get(name)
    if q is None:
        raise UnknownQueue(name)
    return q


def validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic errors as `[{field, message}]`, fields in camelCase dotted form."""
    out = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err.get("loc", ()))
        out.append({"field": field or "(body)", "message": err.get("msg", "invalid")})
    return out


def _invalid(prefix: str, exc: ValidationError) -> InvalidPayload:
    errors = validation_errors(exc)
    text = "; ".join(f"{prefix}{e['field']}: {e['message']}" for e in errors)
    return InvalidPayload(f"invalid payload: {text}", errors=errors)


def payload_model(queue: str, allow_test_only: bool = False) -> type[JobPayload]:
    """The payload model of a queue, or UnknownQueue."""
    q = QUEUE_TABLE.get(queue)
    if q is None or (q.test_only and not allow_test_only):
        raise UnknownQueue(queue)
    return q.payload


def parse_payload(queue: str, data: Any, allow_test_only: bool = False) -> JobPayload:
    """Validate a payload for a queue; raises UnknownQueue or InvalidPayload naming each field."""
    model = payload_model(queue, allow_test_only)
    if not isinstance(data, dict):
        raise InvalidPayload("invalid payload: the body must be a JSON object", errors=[{"field": "(body)", "message": "must be an object"}])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _invalid("", exc) from None


def parse_options(data: Any) -> JobOptions:
    """Validate job options; raises InvalidPayload naming each field."""
    if data is None:
        return JobOptions()
    if isinstance(data, JobOptions):
        return data
    try:
        return JobOptions.model_validate(data)
    except ValidationError as exc:
        raise _invalid("options.", exc) from None
