"""API tokens: JWT HS256 whose subject is the user id; the `admin` role may pause queues and see all.

Also the least-privilege credentials derived from the same secret: artifact URLs signed for one
path and a short time (`UrlSigner`), so a browser `<img>` needs no token in its URL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from typing import Any

import jwt

from dash_ray.config import Settings
from dash_ray.errors import Unauthorized
from dash_ray.models.base import is_user_id

__all__ = ["Principal", "TokenAuth", "UrlSigner", "bearer"]


def bearer(authorization: str | bytes | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value (bytes are read as latin-1,
    as HTTP headers are), else None: the one parser of REST, the edge, /metrics and the socket."""
    if isinstance(authorization, bytes):
        authorization = authorization.decode("latin-1")
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user id, whether they are an admin, their fair-share weight if the
    token carries one, and the group (`org` claim) whose GPU budget they share, if any."""

    user_id: str
    admin: bool = False
    weight: float | None = None  # the token's fair-share weight (None: the deployment's for the user)
    org: str | None = None  # the token's `org`: its members share that group's budget (queues/ledger.py)

    def may_see(self, owner: str | None) -> bool:
        """True if this caller may read or act on a job owned by `owner`."""
        return self.admin or (owner is not None and owner == self.user_id)


class TokenAuth:
    """Mints and verifies HS256 tokens with one shared secret.

    `audience` / `issuer`: when set, tokens must carry them (`aud`, `iss`), so a token made for
    another service with the same secret is refused. A token whose lifetime (`exp` - `iat`, or
    from now when there is no `iat`) is over `max_lifetime_s` is refused, and an admin token
    over `max_admin_lifetime_s`: a leaked token cannot be good for years.
    """

    def __init__(self, secret: str, ttl_s: int = 7 * 24 * 3600, *, admin_ttl_s: int = 8 * 3600,
                 max_lifetime_s: int = 30 * 24 * 3600, max_admin_lifetime_s: int = 24 * 3600,
                 audience: str | None = None, issuer: str | None = None) -> None:
        if len(secret) < 32:
            raise ValueError("token secret must be at least 32 characters")
        self.secret = secret
        self.ttl_s = ttl_s
        self.admin_ttl_s = admin_ttl_s
        self.max_lifetime_s = max_lifetime_s
        self.max_admin_lifetime_s = max_admin_lifetime_s
        self.audience = audience
        self.issuer = issuer
        self._accepted: dict[str, tuple[Principal, float]] = {}  # token -> (its caller, its expiry)

    remembered = 10_000  # accepted tokens kept at most

    @classmethod
    def of(cls, s: Settings) -> TokenAuth:
        """The token rules of a deployment's settings."""
        return cls(s.secret(), s.token_ttl_s, admin_ttl_s=s.admin_token_ttl_s, max_lifetime_s=s.max_token_lifetime_s,
                   max_admin_lifetime_s=s.max_admin_token_lifetime_s, audience=s.token_audience,
                   issuer=s.token_issuer)

    def mint(self, user_id: str, admin: bool = False, ttl_s: int | None = None, weight: float | None = None,
             org: str | None = None) -> str:
        """A token for `user_id` (with the admin role if asked, in the group `org` if given),
        valid for ttl_s seconds (default: the user or admin lifetime; never over the maximum)."""
        if not is_user_id(user_id):
            raise ValueError("user id must be 1-128 letters, digits, '_', '.', '@' or '-'")
        ttl = ttl_s or (min(self.admin_ttl_s, self.ttl_s) if admin else self.ttl_s)
        limit = self.max_admin_lifetime_s if admin else self.max_lifetime_s
        if ttl > limit:
            raise ValueError(f"a{'n admin' if admin else ''} token may live at most {limit}s")
        now = int(time.time())
        claims: dict[str, object] = {"sub": user_id, "iat": now, "exp": now + ttl, "roles": ["admin"] if admin else []}
        if weight is not None:
            if not 0.01 <= weight <= 100:
                raise ValueError("a weight must be within 0.01 and 100")
            claims["weight"] = weight
        if org is not None:
            if not is_user_id(org):
                raise ValueError("an org must be 1-128 letters, digits, '_', '.', '@' or '-'")
            claims["org"] = org
        if self.audience:
            claims["aud"] = self.audience
        if self.issuer:
            claims["iss"] = self.issuer
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def verify(self, token: str | None) -> Principal:
        """The caller of a token; raises Unauthorized if it is missing, bad, expired, for
        another audience or issuer, or made to live too long.

        A token accepted once is remembered until its expiry (checked again on every use), so a
        client's next requests skip the signature and claims checks: nothing in an accepted
        token's checks but its expiry changes with time."""
        if not token:
            raise Unauthorized("missing token: send 'Authorization: Bearer <token>'")
        known = self._accepted.get(token)
        if known is not None:
            if known[1] > time.time():
                return known[0]
            self._accepted.pop(token, None)
            raise Unauthorized("token expired")
        return self._verify(token)

    def _verify(self, token: str) -> Principal:
        required = ["sub", "exp"] + (["aud"] if self.audience else []) + (["iss"] if self.issuer else [])
        try:
            claims = jwt.decode(token, self.secret, algorithms=["HS256"], audience=self.audience, issuer=self.issuer,
                                options={"require": required, "verify_aud": bool(self.audience)})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        sub = claims.get("sub")
        if not is_user_id(sub):
            raise Unauthorized("invalid token: bad subject")
        roles = claims.get("roles") or []
        admin = isinstance(roles, list) and "admin" in roles
        iat = claims.get("iat")
        start = float(iat) if isinstance(iat, int | float) else time.time()
        if float(claims["exp"]) - start > (self.max_admin_lifetime_s if admin else self.max_lifetime_s):
            raise Unauthorized("invalid token: it was made to live longer than this server allows")
        weight = claims.get("weight")
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, int | float)
                                   or not 0.01 <= weight <= 100):
            raise Unauthorized("invalid token: bad weight")
        org = claims.get("org")
        if org is not None and not is_user_id(org):
            raise Unauthorized("invalid token: bad org")
        who = Principal(user_id=sub, admin=admin, weight=None if weight is None else float(weight), org=org)
        if len(self._accepted) >= self.remembered:  # only accepted tokens count: minted with our secret
            self._accepted.clear()  # a bound, not an LRU: refilled by the clients still calling
        self._accepted[token] = (who, float(claims["exp"]))
        return who


_ARTIFACT = re.compile(r'"(/v1/artifacts/[A-Za-z0-9_.@\-/]+)"')


class UrlSigner:
    """Artifact URLs signed for one path and a short time: `/v1/artifacts/<path>?exp=...&sig=...`.

    The signature is an HMAC (SHA-256, a key derived from the token secret) of the path and the
    expiry: changing either breaks it. The gateway signs the artifact links of every job view and
    event it sends, so a browser `<img src>` works with no token in the URL."""

    def __init__(self, secret: str, ttl_s: int = 3600) -> None:
        self._key = hmac.new(secret.encode(), b"dash-ray artifact urls", hashlib.sha256).digest()
        self.ttl_s = ttl_s

    def _sig(self, path: str, exp: int) -> str:
        mac = hmac.new(self._key, f"{path}\n{exp}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:18]).decode()

    def sign(self, url: str, now: float | None = None) -> str:
        """`/v1/artifacts/<path>` with its expiry and signature."""
        exp = int((now or time.time()) + self.ttl_s)
        return f"{url}?exp={exp}&sig={self._sig(url, exp)}"

    def valid(self, url: str, exp: str | None, sig: str | None) -> bool:
        """True for a signature made for this path that has not expired."""
        if not exp or not sig or not (exp.isascii() and exp.isdigit()) or len(exp) > 12 or int(exp) < time.time():
            return False
        return hmac.compare_digest(sig, self._sig(url, int(exp)))

    def sign_json(self, text: str, owner: str | None) -> str:
        """JSON text (a job's event, or a part of its view the server wrote) with the links to
        `owner`'s artifacts signed. A link to anyone else's file is left as it is: text a user
        wrote can name another user's file, and a signature is a credential."""
        if not owner or "/v1/artifacts/" not in text:
            return text
        now = time.time()
        mine = f"/v1/artifacts/{owner}/"

        def sign(m: re.Match[str]) -> str:
            path = m.group(1)
            return f'"{self.sign(path, now)}"' if path.startswith(mine) else m.group(0)

        return _ARTIFACT.sub(sign, text)

    def sign_view(self, view: dict[str, Any]) -> dict[str, Any]:
        """A job view (wire form) with the links to its owner's artifacts signed, in what the
        server wrote (result, error, message): never in the payload (`data`), which the user
        wrote."""
        owner = view.get("userId")
        if not owner:
            return view
        out = dict(view)
        for key, value in view.items():
            if key != "data" and value is not None and not isinstance(value, int | float | bool):
                out[key] = self._sign_value(value, owner)
        return out

    def _sign_value(self, value: Any, owner: str) -> Any:
        if isinstance(value, str):
            if value.startswith(f"/v1/artifacts/{owner}/") and _ARTIFACT.fullmatch(f'"{value}"'):
                return self.sign(value)
            return value
        if isinstance(value, dict):
            return {k: self._sign_value(v, owner) for k, v in value.items()}
        if isinstance(value, list):
            return [self._sign_value(v, owner) for v in value]
        return value
