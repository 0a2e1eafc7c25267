"""Who owns an embedded Redis's data dir (`DataDirOwner`): the owner file `redis.owner` (pid and
port of the server running on it; pid 0 once stopped, its port kept for the next start), and
what a new owner does with a server recorded there: take it over if it answers as that process,
else stop what is left of it. Also the process and socket probes that needs (`alive`,
`redis_pid`, `stop_pid`, `port_free`), shared with `embedded.EmbeddedRedis`."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["DataDirOwner", "alive", "auth_command", "cmdline", "port_free", "redis_pid", "stop_pid"]

log = logging.getLogger(__name__)


def auth_command(password: str) -> bytes:
    """AUTH in RESP ('' for no password)."""
    return b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(password.encode()), password.encode()) if password else b""


def cmdline(pid: int) -> str:
    """The command line of a process ('' if unknown)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """True while the process runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return ") Z " not in Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True


def stop_pid(pid: int, timeout_s: float) -> None:
    """SIGTERM a process we own (by pid), then SIGKILL if it does not exit in time."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)


def port_free(port: int) -> bool:
    """True if a server could listen on the port now (as Redis binds: with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def redis_pid(port: int, password: str = "") -> int | None:
    """The process id the Redis answering on `port` reports, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(auth_command(password) + b"INFO server\r\n")
            data = b""
            while b"process_id:" not in data or not data.endswith(b"\r\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    return None


class DataDirOwner:
    """The owner file of one data dir, and the take-over of the server it records. The probes
    are parameters so that the decisions can be tested without processes."""

    PORT_WAIT_S = 2.0  # a server just ended may take a moment to let go of its port

    def __init__(self, data_dir: Path, *, is_alive: Callable[[int], bool] = alive,
                 answers_as: Callable[[int, str], int | None] = redis_pid,
                 command_of: Callable[[int], str] = cmdline, stop: Callable[[int, float], None] = stop_pid,
                 is_free: Callable[[int], bool] = port_free) -> None:
        self.path = data_dir / "redis.owner"
        self.is_alive, self.answers_as, self.command_of, self.stop, self.is_free = (
            is_alive, answers_as, command_of, stop, is_free)

    def read(self) -> tuple[int, int] | None:
        """(pid, port) recorded, or None (no file, or not two numbers)."""
        try:
            pid, port = (int(x) for x in self.path.read_text().split())
            return pid, port
        except (OSError, ValueError):
            return None

    def write(self, pid: int | None, port: int) -> None:
        """Record the server now on the data dir (pid 0 or None: stopped; its port stays the next choice)."""
        self.path.write_text(f"{pid or 0} {port}\n")

    def take_over_or_clear(self, password: str, port: int) -> tuple[int, int | None]:
        """A server recorded in the owner file: adopt it if it answers as that process (returns
        its port and pid), else stop what is left of it and keep its port for the new one if
        `port` is 0 (returns the port to start on, 0 for any, and None)."""
        found = self.read()
        if found is None:
            return port, None
        pid, recorded = found
        if pid > 0 and self.is_alive(pid) and self.answers_as(recorded, password) == pid:
            log.info("embedded redis pid %d on port %d is still running: taking it over", pid, recorded)
            return recorded, pid
        if pid > 0 and self.is_alive(pid) and "redis" in self.command_of(pid):
            log.warning("embedded redis pid %d does not answer: stopping it", pid)
            self.stop(pid, 3.0)
        if not port:
            deadline = time.monotonic() + self.PORT_WAIT_S
            while not self.is_free(recorded) and time.monotonic() < deadline:
                time.sleep(0.05)
            port = recorded if self.is_free(recorded) else 0
        return port, None
