"""Check a dash-ray webhook on the receiving side (Standard Webhooks signatures; stdlib only).

    from dash_ray.client import verify_webhook
    event = verify_webhook(secret, request.headers, request.body)   # raises ValueError if forged

`secret` is yours, from `Client.webhook_secret()`. Deliveries come at least once: the same
`webhook-id` (and the event's `seq`) on a retry, so keep the ids you have handled.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["verify_webhook"]


def verify_webhook(secret: str, headers: Mapping[str, str], body: bytes | str, *,
                   tolerance_s: float = 300.0, now: float | None = None) -> dict[str, Any]:
    """The delivered event (the same JSON as the WebSocket's), once its signature is checked and
    its timestamp is within `tolerance_s` of now (a replayed old delivery is refused)."""
    h = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, sigs = h.get("webhook-id"), h.get("webhook-timestamp"), h.get("webhook-signature")
    if not (msg_id and stamp and sigs):
        raise ValueError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        ts = int(stamp)
    except ValueError:
        raise ValueError("bad webhook-timestamp") from None
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        raise ValueError("webhook-timestamp too far from now")
    text = body.decode() if isinstance(body, bytes) else body
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.{text}".encode(), hashlib.sha256).digest()).decode()
    for sig in sigs.split():  # several, space-separated, while a secret is rotated
        version, _, value = sig.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            out = json.loads(text)
            return out if isinstance(out, dict) else {"data": out}
    raise ValueError("no valid webhook-signature")
