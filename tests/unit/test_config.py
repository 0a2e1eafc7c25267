"""Settings come from the environment; a bad value names its variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from dash_ray.config import load_settings
from dash_ray.errors import ConfigError


def test_defaults_follow_the_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("REDIS_URL", "REDIS_HOST", "WEBSOCKET_PORT"):
        monkeypatch.delenv(var, raising=False)
    s = load_settings()
    assert [(q.name, q.concurrency) for q in s.queues()] == [("training", 1), ("upscaling", 3), ("generation", 5)]
    assert s.queue("generation").resource == "dash_generation"
    assert s.resolved_redis_url() is None and not s.redis_configured
    assert s.websocket_port == 8000


def test_seed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("REDIS_HOST", "10.1.2.3")
    monkeypatch.setenv("REDIS_PORT", "6380")
    monkeypatch.setenv("REDIS_PASSWORD", "p@ss")
    monkeypatch.setenv("WEBSOCKET_PORT", "3001")
    monkeypatch.setenv("DASH_GENERATION_CONCURRENCY", "7")
    monkeypatch.setenv("DASH_MODELS", '{"sd15": "/models/sd15"}')
    s = load_settings()
    assert s.resolved_redis_url() == "redis://:p%40ss@10.1.2.3:6380/0"
    assert s.websocket_port == 3001
    assert s.queue("generation").concurrency == 7
    assert s.models == {"sd15": "/models/sd15"}


def test_lists_from_the_environment_as_commas_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASH_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8, 10.0.0.0/8")
    monkeypatch.setenv("DASH_ALLOWED_IMAGE_NETWORKS", '["192.168.0.0/16"]')
    monkeypatch.setenv("DASH_ALLOWED_IMAGE_HOSTS", "images.example.com,cdn.example.com")
    s = load_settings()
    assert s.webhook_allowed_networks == ["127.0.0.0/8", "10.0.0.0/8"]
    assert s.allowed_image_networks == ["192.168.0.0/16"]
    assert s.allowed_image_hosts == ["images.example.com", "cdn.example.com"]
    monkeypatch.setenv("DASH_USER_WEIGHTS", "alice=2, bob=0.5")
    assert load_settings().user_weights == {"alice": 2.0, "bob": 0.5}
    monkeypatch.setenv("DASH_WEBHOOK_ALLOWED_NETWORKS", "not-a-net")
    with pytest.raises(ConfigError, match="DASH_WEBHOOK_ALLOWED_NETWORKS"):
        load_settings()
    monkeypatch.delenv("DASH_WEBHOOK_ALLOWED_NETWORKS")
    for bad in ("alice=lots", "alice=1000", "alice"):
        monkeypatch.setenv("DASH_USER_WEIGHTS", bad)
        with pytest.raises(ConfigError, match="DASH_USER_WEIGHTS"):
            load_settings()


@pytest.mark.parametrize(
    ("var", "value"),
    [("REDIS_PORT", "abc"), ("WEBSOCKET_PORT", "70000"), ("DASH_GENERATION_CONCURRENCY", "0"),
     ("DASH_TRAINING_GPU_FRACTION", "1.5"), ("DASH_RATE_SUBMIT", "lots"), ("DASH_KEY_PREFIX", "a b")],
)
def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert var in str(info.value)


def test_workers_get_no_secret_of_the_gateways_and_rays_token_file_is_private(tmp_path: Path) -> None:
    from dash_ray.scheduler.cluster import private_ray_token

    s = load_settings(token_secret="t" * 40, webhook_secret="w" * 40, metrics_token="m" * 20, data_dir=tmp_path)
    w = s.for_workers()
    assert (w.token_secret, w.webhook_secret, w.metrics_token) == (None, None, None)
    assert w.key_prefix == s.key_prefix and s.token_secret == "t" * 40  # the rest is kept; the original untouched
    token = tmp_path / "auth_token"
    token.write_text("x")
    token.chmod(0o644)
    private_ray_token(token)
    assert token.stat().st_mode & 0o777 == 0o600


def test_credentials_in_urls_never_reach_the_access_log() -> None:
    import logging

    from dash_ray import runtime

    runtime.hide_credentials_in_access_logs()
    runtime.hide_credentials_in_access_logs()  # once is enough: no second filter
    access = logging.getLogger("uvicorn.access")
    assert sum(type(f).__name__ == "_HideCredentials" for f in access.filters) == 1
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    keep = Keep()
    access.addHandler(keep)
    old_level, access.level = access.level, logging.INFO
    was_disabled, access.disabled = access.disabled, False  # a logging config run earlier may disable it
    try:  # the way uvicorn logs a request: client, method, path with query, version, status
        for path, status in (("/ws?token=eyJsecret.part&previews=1&ticket=t0p&x=1", 101),
                             ("/v1/artifacts/a/b/c.png?exp=1&sig=SIGSECRET", 200)):
            # handled as the logger handles a record it logs (whatever levels other tests left set)
            access.handle(access.makeRecord("uvicorn.access", logging.INFO, __file__, 0, '%s - "%s %s HTTP/%s" %d',
                                            ("127.0.0.1:5", "GET", path, "1.1", status), None))
    finally:
        access.removeHandler(keep)
        access.level = old_level
        access.disabled = was_disabled
    assert seen == ['127.0.0.1:5 - "GET /ws?token=***&previews=1&ticket=***&x=1 HTTP/1.1" 101',
                    '127.0.0.1:5 - "GET /v1/artifacts/a/b/c.png?exp=1&sig=*** HTTP/1.1" 200']
