"""A local autoscaling Ray cluster: Ray's fake multi-node provider (`RAY_FAKE_CLUSTER=1`,
`ray start --head --autoscaling-config=...`), whose "nodes" are raylets on this machine.

Everything stays on 127.0.0.1. `ray start --block` runs in a session of its own, and `stop()`
ends exactly the processes of that session (the head's, the autoscaler's, the nodes it launched
and their workers), by PID: never `ray stop`, which would end every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dash_ray.testing import free_port

__all__ = ["GPU1", "FakeAutoscalingCluster", "gpu_nodes", "session_pids"]

# cluster.yaml's 1-GPU node type, as the fake provider launches it.
GPU1 = {"resources": {"CPU": 1, "GPU": 1, "dash_training": 1, "dash_upscaling": 3, "dash_generation": 5}}

_EMPTY: dict[str, list[Any]] = {key: [] for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                              "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands",
                              "cluster_synced_files", "rsync_exclude", "rsync_filter")}


def session_pids(sid: int) -> list[int]:
    """Live processes whose session id is `sid` (field 6 of /proc/<pid>/stat; zombies left out)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 3 and int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(entry))
    return out


class FakeAutoscalingCluster:
    """A CPU head plus worker node types that Ray's autoscaler launches and removes by itself."""

    def __init__(self, head_resources: dict[str, float], node_types: dict[str, dict[str, Any]], *,
                 idle_timeout_minutes: float = 0.1, max_workers: int = 4) -> None:
        self.head_resources = dict(head_resources)
        self.node_types = node_types
        self.idle_timeout_minutes = idle_timeout_minutes
        self.max_workers = max_workers
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Short: Ray's socket paths live under it.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="drf", dir="/tmp"))
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> dict[str, Any]:
        """The autoscaling config (the same schema as cluster.yaml, with the fake provider)."""
        head = dict(self.head_resources)
        types: dict[str, Any] = {"ray.head.default": {"resources": head, "node_config": {}, "max_workers": 0}}
        for name, spec in self.node_types.items():
            types[name] = {"node_config": {}, "min_workers": 0, "max_workers": self.max_workers, **spec}
        return {
            "cluster_name": "dash-fake", "max_workers": self.max_workers, "upscaling_speed": 1.0,
            "idle_timeout_minutes": self.idle_timeout_minutes,
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": self.address},
            "available_node_types": types, "head_node_type": "ray.head.default",
            "auth": {}, "docker": {}, "file_mounts": {}, "file_mounts_sync_continuously": False, **_EMPTY,
        }

    def start(self, timeout_s: float = 60.0) -> str:
        """Start the head (and its autoscaler); returns the address to `ray.init` with."""
        cfg = self.temp_dir / "autoscaling.json"
        cfg.write_text(json.dumps(self.config()))
        head = dict(self.head_resources)
        cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={self.port}",
               "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp_dir}", "--include-dashboard=false",
               "--disable-usage-stats", f"--autoscaling-config={cfg}",
               f"--num-cpus={int(head.pop('CPU', 1))}", f"--num-gpus={head.pop('GPU', 0)}"]
        if head:
            cmd.append(f"--resources={json.dumps(head)}")
        # No token auth on this loopback-only cluster: `ray start` turns it on when ~/.ray/auth_token
        # exists (a local Ray made one), and a driver joining with RAY_AUTH_MODE unset would be refused.
        env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
               "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
        log = open(self.temp_dir / "ray-start.log", "wb")  # noqa: SIM115 (the process holds it)
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {(self.temp_dir / 'ray-start.log').read_text()[-2000:]}")
            if b"Ray runtime started" in (self.temp_dir / "ray-start.log").read_bytes():
                return self.address
            time.sleep(0.2)
        self.stop()
        raise TimeoutError("the fake cluster's head did not start")

    def stop(self, timeout_s: float = 15.0) -> None:
        """End every process of the cluster's session, by PID (SIGTERM, then SIGKILL)."""
        if self.proc is None:
            return
        sid = self.proc.pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in session_pids(sid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and session_pids(sid):
                self.proc.poll()  # reaps `ray start` itself once it exits
                time.sleep(0.2)
            if not session_pids(sid):
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.proc = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def gpu_nodes() -> list[str]:
    """Alive Ray nodes that offer generation slots."""
    import ray

    return [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("dash_generation")]
