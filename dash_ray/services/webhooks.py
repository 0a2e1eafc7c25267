"""Webhook signatures, the Standard Webhooks way (https://www.standardwebhooks.com/).

Each user has their own signing secret (`whsec_` + base64 of 32 bytes), derived from the
deployment's webhook secret, so one user cannot sign as another. A delivery carries
`webhook-id` (the job and the event's seq, the same on every retry), `webhook-timestamp`
(Unix seconds) and `webhook-signature` (`v1,` + base64 of HMAC-SHA256 over
`{id}.{timestamp}.{body}` keyed with the secret's bytes).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

__all__ = ["sign", "signature_headers", "user_secret"]


def user_secret(master: str, user_id: str) -> str:
    """A user's signing secret (`whsec_...`) under the deployment's `master` secret."""
    raw = hmac.new(master.encode(), b"dash-ray webhook\x1f" + user_id.encode(), hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(raw).decode()


def sign(secret: str, message_id: str, timestamp: int, body: str) -> str:
    """The `v1,<base64>` signature of one delivery."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signature_headers(secret: str, message_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The three Standard Webhooks headers of a delivery."""
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, message_id, timestamp, body)}
