"""`dash-ray up` as a user runs it: starting it and finding its port."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time


def start_up(env: dict[str, str]) -> tuple[subprocess.Popen[str], str, list[str]]:
    """`dash-ray up` until it prints its token; returns (process, token, its output), the output
    list growing with every later line while the process runs (for a failing test to show)."""
    proc = subprocess.Popen([sys.executable, "-m", "dash_ray.cli", "up", "--user", "tester"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            log.append(line)
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    token = ""
    t0 = time.monotonic()
    try:
        while True:
            line = lines.get(timeout=max(1.0, 120 - (time.monotonic() - t0)))
            seen.append(line)
            if seen[-2:-1] and "Token for user 'tester'" in seen[-2]:
                token = line.strip()
            if "Press Ctrl-C" in line:
                return proc, token, log
    except BaseException:
        proc.kill()  # never came up: end it (its own process group holds the rest)
        raise
