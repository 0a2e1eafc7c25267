"""The `redis+sentinel://` URL form (queues/connection.py) and the settings that build it."""

from __future__ import annotations

import pytest

from dash_ray.config import load_settings
from dash_ray.queues.connection import SentinelUrl, redacted, sentinel_url
from dash_ray.queues.pubsub import Endpoint


def test_a_sentinel_url_names_its_sentinels_primary_db_and_password() -> None:
    url = "redis+sentinel://:s%40cret@10.0.0.1:26379,10.0.0.2:26380,[::1]:26381/mymaster/2"
    assert sentinel_url(url) == SentinelUrl((("10.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 26381)), "mymaster", 2,
                                            None, "s@cret")  # the sentinels: asked without a password
    with_spw = sentinel_url(url + "?sentinel_password=x%26y")
    assert with_spw is not None and with_spw.sentinel_password == "x&y" and with_spw.password == "s@cret"
    assert "x%26y" not in redacted(url + "?sentinel_password=x%26y")
    assert sentinel_url("redis://127.0.0.1:6379/0") is None
    assert "s%40cret" not in redacted(url) and redacted(url).startswith("redis+sentinel://:***@10.0.0.1:26379,")
    assert Endpoint.of(url).sentinel == sentinel_url(url)  # pub/sub asks the same sentinels
    for bad in ("redis+sentinel://10.0.0.1:26379", "redis+sentinel://10.0.0.1/mymaster",
                "redis+sentinel://10.0.0.1:x/mymaster"):
        with pytest.raises(ValueError):
            sentinel_url(bad)


def test_sentinel_settings_build_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    s = load_settings(redis_sentinels="a:26379, b:26379", redis_sentinel_master="prod", redis_password="p w")
    assert s.redis_configured and s.resolved_redis_url() == "redis+sentinel://:p%20w@a:26379,b:26379/prod/0"
    assert sentinel_url(s.resolved_redis_url() or "") == SentinelUrl((("a", 26379), ("b", 26379)), "prod", 0, None, "p w")
    s = load_settings(redis_sentinels="a:26379", redis_sentinel_password="sp")
    assert (sentinel_url(s.resolved_redis_url() or "") or SentinelUrl((), "")).sentinel_password == "sp"
