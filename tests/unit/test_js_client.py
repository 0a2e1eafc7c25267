"""The dashboard serves the very client that `clients/js` publishes (a copy, kept current)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_dashboard_copy_of_the_js_client_is_current() -> None:
    source = (ROOT / "clients/js/src/index.js").read_text()
    served = (ROOT / "dash_ray/gateway/static/dash-ray-client.js").read_text()
    assert served == source, "run: cp clients/js/src/index.js dash_ray/gateway/static/dash-ray-client.js"
