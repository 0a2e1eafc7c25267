"""A Sentinel-managed Redis on loopback, for tests and benchmarks: one primary, its replicas (one
by default) and three sentinels, each a `redis-server` process of this machine's (Debian's; `--sentinel` for
the sentinels) started here and stopped by its PID. `kill_primary` SIGKILLs the primary, as a
lost machine would; the sentinels then promote the replica (about `down_after_ms` + 1-2 s)."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis import Redis

from dash_ray.testing import free_port

__all__ = ["SentinelSet"]

PRIMARY = "mymaster"


def _synced(port: int) -> bool:
    return bool(Redis(port=port, socket_timeout=2).info("replication").get("master_link_status") == "up")


def _met(port: int, replicas: int) -> bool:
    """True once the sentinel on `port` knows the replicas and the two other sentinels."""
    s = Redis(port=port, socket_timeout=2)
    return (len(s.execute_command("SENTINEL", "REPLICAS", PRIMARY)) >= replicas
            and len(s.execute_command("SENTINEL", "SENTINELS", PRIMARY)) >= 2)


class SentinelSet:
    """Start with `start()` (or `with`); `url` is its `redis+sentinel://` URL."""

    def __init__(self, root: Path, *, replicas: int = 1, down_after_ms: int = 1000, server: str | None = None) -> None:
        self.root = root
        self.server = server or shutil.which("redis-server") or "redis-server"
        self.down_after_ms = down_after_ms
        self.ports = {"primary": free_port(), **{f"replica{i}": free_port() for i in range(replicas)}}
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{PRIMARY}/0"

    def _spawn(self, name: str, args: list[str]) -> None:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        log = open(d / "log", "ab")  # noqa: SIM115 (the process holds it)
        self.procs[name] = subprocess.Popen([self.server, *args], stdout=log, stderr=subprocess.STDOUT, cwd=d)

    def _server(self, name: str, *more: str) -> None:
        port = self.ports[name]
        self._spawn(name, ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                           "--dir", str(self.root / name), *more])

    def start(self, timeout_s: float = 30.0) -> SentinelSet:
        """Start the primary, its replicas (synced) and the sentinels (each knowing the replicas
        and the two other sentinels); TimeoutError if that takes longer than `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        self._server("primary")
        names = [n for n in self.ports if n != "primary"]
        for name in names:
            self._server(name, "--replicaof", "127.0.0.1", str(self.ports["primary"]))
        for name in names:
            self._until(deadline, functools.partial(_synced, self.ports[name]), "the replicas sync")
        for i, port in enumerate(self.sentinel_ports):
            d = self.root / f"sentinel{i}"
            d.mkdir(parents=True, exist_ok=True)
            conf = d / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {d}\n"
                f"sentinel monitor {PRIMARY} 127.0.0.1 {self.ports['primary']} 2\n"
                f"sentinel down-after-milliseconds {PRIMARY} {self.down_after_ms}\n"
                f"sentinel failover-timeout {PRIMARY} 10000\nsentinel parallel-syncs {PRIMARY} 1\n")
            self._spawn(f"sentinel{i}", [str(conf), "--sentinel"])
        for port in self.sentinel_ports:
            self._until(deadline, functools.partial(_met, port, len(names)), "the sentinels meet")
        return self

    def primary_port(self) -> int:
        """The port of the primary the sentinels name now."""
        s = Redis(port=self.sentinel_ports[0], socket_timeout=2)
        _host, port = s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", PRIMARY)
        return int(port)

    def kill_primary(self) -> int:
        """SIGKILL the process that is the primary now; returns its port."""
        port = self.primary_port()
        name = next(n for n, p in self.ports.items() if p == port)
        proc = self.procs[name]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        return port

    def stop(self) -> None:
        """Stop every process it started (by PID)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    def __enter__(self) -> SentinelSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def _until(deadline: float, check: Callable[[], Any], what: str) -> None:
        while True:
            try:
                if check():
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.05)
