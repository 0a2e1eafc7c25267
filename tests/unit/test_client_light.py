"""The client is light: `import dash_ray; dash_ray.Client` loads no server code, torch or Ray."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "ray", "redis", "bullmq", "fastapi", "starlette", "uvicorn", "diffusers", "PIL", "matplotlib",
         "dash_ray.gateway", "dash_ray.queues", "dash_ray.scheduler", "dash_ray.workers")


def test_the_client_imports_only_base_dependencies() -> None:
    code = (
        "import sys, dash_ray\n"
        "c = dash_ray.Client('http://127.0.0.1:9', 'token'); a = dash_ray.AsyncClient\n"
        "from dash_ray.client import JobHandle, JobFailed, RateLimited\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "c.close()\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "", f"the client loaded {out.stdout.strip()}"


def test_images_go_as_data_urls_and_urls_as_they_are(tmp_path: object) -> None:
    from pathlib import Path

    from dash_ray.client import image_ref

    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
    path = Path(str(tmp_path)) / "x.bin"
    path.write_bytes(png)
    assert image_ref(png).startswith("data:image/png;base64,")
    assert image_ref(path).startswith("data:image/png;base64,")
    assert image_ref(b"\xff\xd8\xff\xe0rest").startswith("data:image/jpeg;base64,")
    for url in ("https://x.example/a.png", "upload://abc", "data:image/png;base64,AA=="):
        assert image_ref(url) == url
