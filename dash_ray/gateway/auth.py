"""API tokens: JWT HS256 whose subject is the user id; the `admin` role may pause queues and see all."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import jwt

from dash_ray.errors import Unauthorized

__all__ = ["Principal", "TokenAuth"]

_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,127}$")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user id and whether they are an admin."""

    user_id: str
    admin: bool = False

    def may_see(self, owner: str | None) -> bool:
        """True if this caller may read or act on a job owned by `owner`."""
        return self.admin or (owner is not None and owner == self.user_id)


class TokenAuth:
    """Mints and verifies HS256 tokens with one shared secret."""

    def __init__(self, secret: str, ttl_s: int = 7 * 24 * 3600) -> None:
        if len(secret) < 32:
            raise ValueError("token secret must be at least 32 characters")
        self.secret = secret
        self.ttl_s = ttl_s

    def mint(self, user_id: str, admin: bool = False, ttl_s: int | None = None) -> str:
        """A token for `user_id` (with the admin role if asked), valid for ttl_s seconds."""
        if not _USER.match(user_id):
            raise ValueError("user id must be 1-128 letters, digits, '_', '.', '@' or '-'")
        now = int(time.time())
        claims = {"sub": user_id, "iat": now, "exp": now + (ttl_s or self.ttl_s),
                  "roles": ["admin"] if admin else []}
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def verify(self, token: str | None) -> Principal:
        """The caller of a token; raises Unauthorized if it is missing, bad or expired."""
        if not token:
            raise Unauthorized("missing token: send 'Authorization: Bearer <token>'")
        try:
            claims = jwt.decode(token, self.secret, algorithms=["HS256"], options={"require": ["sub", "exp"]})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not _USER.match(sub):
            raise Unauthorized("invalid token: bad subject")
        roles = claims.get("roles") or []
        return Principal(user_id=sub, admin=isinstance(roles, list) and "admin" in roles)
