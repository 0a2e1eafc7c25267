"""Gateway fixtures: the app built inline with its services, driven by TestClient (no Ray)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dash_ray.config import load_settings

SECRET = "test-secret-0123456789abcdef-0123456789"


@pytest.fixture
def make_client(redis_url: str, prefix: str, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Factory: a TestClient over a fresh gateway app on the test's prefix (sleep queue enabled)."""
    from fastapi.testclient import TestClient

    from dash_ray.gateway import GatewayServices, create_app

    clients: list[Any] = []

    def make(**overrides: Any) -> Any:
        overrides.setdefault("token_secret", SECRET)
        overrides.setdefault("data_dir", tmp_path / "data")
        settings = load_settings(key_prefix=prefix, **overrides)
        services = GatewayServices.create(settings, redis_url,
                                          queues=("training", "upscaling", "generation", "sleep"))
        client = TestClient(create_app(services))
        client.__enter__()
        client.services = services  # type: ignore[attr-defined]
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def tokens() -> Callable[..., str]:
    """Mint a token for a user (admin optional), signed with the test secret."""
    from dash_ray.gateway import TokenAuth

    auth = TokenAuth(SECRET)

    def mint(user: str, admin: bool = False, ttl_s: int | None = None, org: str | None = None) -> str:
        return auth.mint(user, admin=admin, ttl_s=ttl_s, org=org)

    return mint


def run_async(coro: Any) -> Any:
    """Run a coroutine on its own loop (sync tests drive consumers this way)."""
    return asyncio.run(coro)
