"""The package's shape: every public name exists, and the queue table drives every layer."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import dash_ray
from dash_ray.config import load_settings
from dash_ray.models.queues import QUEUE_TABLE, QUEUES

MODULES = sorted(m.name for m in pkgutil.walk_packages(dash_ray.__path__, "dash_ray."))


@pytest.mark.parametrize("name", ["dash_ray", *MODULES])
def test_every_name_in_all_exists(name: str) -> None:
    module = importlib.import_module(name)
    for public in getattr(module, "__all__", ()):
        assert hasattr(module, public), f"{name}.__all__ names {public!r}, which does not exist"


def test_the_queue_table_drives_settings_specs_and_routes() -> None:
    """A queue is one row of the table: it gets its settings, its scheduler spec (runner,
    slots, GPU share) and its typed submit route without naming it anywhere else."""
    from dash_ray.gateway.app import _submit_routes
    from dash_ray.scheduler import queue_specs

    settings = load_settings(enable_sleep_queue=True)
    routes = {getattr(r, "path", "") for r in _submit_routes(QUEUE_TABLE)[0].routes}
    specs = {s.name: s for s in queue_specs(settings)}
    for q in QUEUE_TABLE.values():
        conf = settings.queue(q.name)
        assert (conf.concurrency, conf.gpu_fraction, conf.runner) == (q.concurrency, q.gpu_fraction, q.runner)
        assert specs[q.name].runner == q.runner and specs[q.name].resource == f"dash_{q.name}"
        assert f"/v1/jobs/{q.name}" in routes
    assert settings.queue_names == tuple(QUEUE_TABLE)
    assert load_settings().queue_names == QUEUES == ("training", "upscaling", "generation")
    assert load_settings(sleep_concurrency=2).queue("sleep").concurrency == 2
