"""Input images fetched the way an attacker would try to abuse them: a host that resolves inside
the network, a slow server, symlinks and FIFOs under an allowed folder, exotic image formats."""

from __future__ import annotations

import base64
import http.server
import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dash_ray.config import load_settings
from dash_ray.errors import WorkerError
from dash_ray.workers.images import fetch_bytes, load_image
from tests.workers.conftest import png_data_url

PNG = base64.b64decode(png_data_url().split(",", 1)[1])


@pytest.fixture
def server() -> Iterator[dict[str, Any]]:
    """An HTTP server on 127.0.0.1: `/ok.png` (records the Host header it got), `/slow.png`
    (a byte every 0.2 s, 100 bytes)."""
    seen: dict[str, Any] = {"hosts": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen["hosts"].append(self.headers.get("Host"))
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            if self.path == "/slow.png":
                self.send_header("Content-Length", "100")
                self.end_headers()
                for _ in range(100):
                    try:
                        self.wfile.write(b"x")
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(0.2)
                return
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)

        def log_message(self, *_: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    seen["port"] = httpd.server_address[1]
    yield seen
    httpd.shutdown()
    httpd.server_close()


def test_a_host_that_resolves_inside_the_network_is_refused_unless_its_network_is_allowed(
        server: dict[str, Any]) -> None:
    url = f"http://localhost:{server['port']}/ok.png"
    closed = load_settings(allowed_image_hosts=["localhost"])
    with pytest.raises(WorkerError, match="private address"):
        fetch_bytes(url, closed)
    assert server["hosts"] == []  # refused before any connection
    opened = load_settings(allowed_image_hosts=["localhost"], allowed_image_networks=["127.0.0.0/8"])
    assert fetch_bytes(url, opened) == PNG
    assert server["hosts"] == [f"localhost:{server['port']}"]  # pinned to the checked address, named in Host
    with pytest.raises(WorkerError, match="not allowed") as info:
        fetch_bytes(f"http://127.0.0.2:{server['port']}/ok.png", opened)
    assert "127.0.0.2" not in str(info.value)  # errors name no hosts


def test_a_slow_image_server_hits_the_total_deadline(server: dict[str, Any]) -> None:
    settings = load_settings(allowed_image_hosts=["127.0.0.1"], allowed_image_networks=["127.0.0.1/32"],
                             image_fetch_timeout_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match="took over 1s"):
        fetch_bytes(f"http://127.0.0.1:{server['port']}/slow.png", settings)
    assert time.monotonic() - t0 < 5


def test_file_urls_refuse_symlinks_fifos_and_escapes(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    outside = tmp_path / "secret.png"
    outside.write_bytes(PNG)
    (allowed / "ok.png").write_bytes(PNG)
    (allowed / "link.png").symlink_to(outside)
    (allowed / "dir").symlink_to(tmp_path)  # a folder link that leads out
    os.mkfifo(allowed / "pipe.png")
    settings = load_settings(allowed_file_dirs=[str(allowed)])
    assert fetch_bytes(f"file://{allowed}/ok.png", settings) == PNG
    with pytest.raises(WorkerError, match="symlink"):
        fetch_bytes(f"file://{allowed}/link.png", settings)
    with pytest.raises(WorkerError, match="outside the allowed folders"):
        fetch_bytes(f"file://{allowed}/dir/secret.png", settings)
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match="not a regular file"):
        fetch_bytes(f"file://{allowed}/pipe.png", settings)  # no writer: it must not block
    assert time.monotonic() - t0 < 2
    with pytest.raises(WorkerError, match="outside the allowed folders"):
        fetch_bytes(f"file://{outside}", settings)


def test_only_the_allowed_image_formats_are_decoded() -> None:
    from PIL import Image

    settings = load_settings()
    for fmt in ("TIFF", "ICO", "PPM"):
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (1, 2, 3)).save(buf, fmt)
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        with pytest.raises(WorkerError, match="not an image"):
            load_image(url, settings)
    assert load_image(png_data_url(), settings).size == (32, 24)
