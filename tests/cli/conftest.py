"""`dash-ray up` as a user runs it: starting it and finding its port."""

from __future__ import annotations

import queue
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_up(env: dict[str, str]) -> tuple[subprocess.Popen[str], str, list[str]]:
    """`dash-ray up` until it prints its token; returns (process, token, output so far)."""
    proc = subprocess.Popen([sys.executable, "-m", "dash_ray.cli", "up", "--user", "tester"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    log: list[str] = []
    token = ""
    t0 = time.monotonic()
    try:
        while True:
            line = lines.get(timeout=max(1.0, 120 - (time.monotonic() - t0)))
            log.append(line)
            if log[-2:-1] and "Token for user 'tester'" in log[-2]:
                token = line.strip()
            if "Press Ctrl-C" in line:
                return proc, token, log
    except BaseException:
        proc.kill()  # never came up: end it (its own process group holds the rest)
        raise
