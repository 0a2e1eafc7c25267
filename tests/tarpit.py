"""A tarpit: a TCP server on 127.0.0.1 that accepts every connection and drips an HTTP answer's
header one byte at a time, never finishing it, so that no per-read timeout ever fires. It
records when each connection opened and when its peer hung up. Use as a context manager."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Tarpit"]


class Tarpit:
    """Accept, read what comes, and drip `HTTP/1.1 200 OK\\r\\nx-drip: aaa...` a byte every `drip_s`."""

    def __init__(self, drip_s: float = 0.2) -> None:
        self.drip_s = drip_s
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.opened: list[float] = []  # monotonic times a connection was accepted
        self.closed: list[float] = []  # ... and its peer hung up (in the order they did)
        self.durations: list[float] = []  # how long each connection the peer hung up was held
        self.live = 0
        self.max_live = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Tarpit:
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for t in list(self._threads):
            t.join(5)
        self.sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._drip, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _drip(self, conn: socket.socket) -> None:
        opened = time.monotonic()
        with self._lock:
            self.opened.append(opened)
            self.live += 1
            self.max_live = max(self.max_live, self.live)
        answer = b"HTTP/1.1 200 OK\r\nx-drip: "
        i = 0
        try:
            with conn:
                while not self._stop.is_set():
                    readable, _, _ = select.select([conn], [], [], self.drip_s)
                    if readable:
                        if not conn.recv(65536):  # the peer hung up
                            self._hung_up(opened)
                            return
                        continue
                    conn.sendall(answer[i:i + 1] if i < len(answer) else b"a")
                    i += 1
        except OSError:
            self._hung_up(opened)
        finally:
            with self._lock:
                self.live -= 1

    def _hung_up(self, opened: float) -> None:
        now = time.monotonic()
        with self._lock:
            self.closed.append(now)
            self.durations.append(now - opened)

    def wait(self, predicate: Callable[[Tarpit], bool], timeout_s: float) -> None:
        """Block until `predicate(self)` holds, else AssertionError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"tarpit: {len(self.opened)} opened, {len(self.closed)} hung up, "
                                     f"held {[round(d, 2) for d in self.durations]}")
            time.sleep(0.02)
