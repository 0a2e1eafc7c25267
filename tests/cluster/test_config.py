"""cluster.yaml and cluster.gcp.yaml as `ray up` reads them, before it talks to the cloud."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dash_ray.config import load_settings
from dash_ray.scheduler import queue_specs
from dash_ray.scheduler.resources import node_resources

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster.gcp.yaml"])
def test_the_cluster_config_passes_rays_validation_and_offers_the_queues_slots(name: str) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / name).read_text())
    config = prepare_config(raw)  # what `ray up` does first (_bootstrap_config), then validates
    validate_config(config)
    per_gpu = node_resources(queue_specs(load_settings()))  # the default slots of one GPU
    types: dict[str, Any] = config["available_node_types"]
    gpu_types = {n: t for n, t in types.items() if t["resources"].get("GPU")}
    assert sorted(t["resources"]["GPU"] for t in gpu_types.values()) == [1, 4]
    for node_type in gpu_types.values():
        res = node_type["resources"]
        assert {k: res[k] for k in per_gpu} == {k: v * res["GPU"] for k, v in per_gpu.items()}
        assert node_type["min_workers"] == 0  # GPU nodes come with a backlog, and go when idle
    head = types[config["head_node_type"]]
    assert not head["resources"].get("GPU") and head["max_workers"] == 0
    assert config["idle_timeout_minutes"] > 0


def test_the_head_runs_redis_ray_with_token_auth_and_the_dashboard_on_loopback() -> None:
    for name in ("cluster.yaml", "cluster.gcp.yaml"):
        config = yaml.safe_load((ROOT / name).read_text())
        assert config["head_start_ray_commands"] == ["bash ~/dash-ray/deployments/head-start.sh"]
        assert all("RAY_AUTH_MODE=token" in c for c in config["worker_start_ray_commands"] if "ray start" in c)
        assert "~/.dash-ray/cluster" in config["file_mounts"]
    import subprocess

    assert subprocess.run(["bash", "-n", str(ROOT / "deployments/head-start.sh")]).returncode == 0
    script = (ROOT / "deployments/head-start.sh").read_text()
    assert "export RAY_AUTH_MODE=token" in script and "--dashboard-host=127.0.0.1" in script
    assert 'dash-ray redis --host "$private_ip"' in script  # password, AOF: tests/redis/test_embedded.py
    assert "dash-ray up --address auto --detach" in script
