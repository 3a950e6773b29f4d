from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from click_gateway.settings import GatewaySettings
from postback_core.settings import AUTO_WORKERS_MAX
from postback_dispatcher.settings import DispatcherSettings


@pytest.mark.parametrize("token", ["", "changeme", "short"])
@pytest.mark.parametrize("settings_class", [GatewaySettings, DispatcherSettings])
def test_refuses_placeholder_admin_token_outside_dev(settings_class: type, token: str) -> None:
    with pytest.raises(ValidationError, match="ADMIN_TOKEN"):
        settings_class(ENV="production", ADMIN_TOKEN=token)


def test_dev_accepts_placeholder_admin_token() -> None:
    assert GatewaySettings(ENV="dev", ADMIN_TOKEN="").is_dev


def test_defaults_match_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "AMQP_URL", "TRUSTED_PROXIES", "GATEWAY_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = GatewaySettings(ENV="dev", _env_file=None)
    assert settings.port == 8000
    assert settings.database_url == "postgresql+asyncpg://postgres@127.0.0.1:5432/postback"
    assert settings.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert settings.trusted_proxies == ()
    assert DispatcherSettings(ENV="dev", _env_file=None).port == 8001


def test_both_services_run_one_worker_per_cpu_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GATEWAY_WORKERS", "DISPATCHER_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    per_cpu = max(1, min(len(os.sched_getaffinity(0)), AUTO_WORKERS_MAX))
    assert GatewaySettings(ENV="dev", _env_file=None).workers == per_cpu
    assert DispatcherSettings(ENV="dev", _env_file=None).workers == per_cpu
    assert GatewaySettings(ENV="dev", GATEWAY_WORKERS=3).workers == 3
    with pytest.raises(ValidationError):
        GatewaySettings(ENV="dev", GATEWAY_WORKERS=-1)


def test_retry_delays_and_trusted_proxies_parse_from_csv() -> None:
    settings = DispatcherSettings(
        ENV="dev", POSTBACK_RETRY_DELAYS="0.5, 2,10", TRUSTED_PROXIES="10.0.0.0/8, 127.0.0.1"
    )
    assert settings.postback_retry_delays == (0.5, 2.0, 10.0)
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.0/8", "127.0.0.1/32"]


def test_rejects_non_positive_retry_delay() -> None:
    with pytest.raises(ValidationError, match="positive"):
        DispatcherSettings(ENV="dev", POSTBACK_RETRY_DELAYS="5,0")
