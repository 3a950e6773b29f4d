"""Dispatcher configuration, read from the environment (see .env.example)."""

from __future__ import annotations

from pydantic import Field

from postback_core.settings import HTTPServiceSettings, resolve_workers


class DispatcherSettings(HTTPServiceSettings):
    port: int = Field(8001, alias="DISPATCHER_PORT", ge=1, le=65535)
    # ``postback-dispatcher consume``: its /healthz, /readyz and /metrics.
    consumer_port: int = Field(8002, alias="DISPATCHER_CONSUMER_PORT", ge=1, le=65535)
    postback_timeout_seconds: float = Field(15.0, alias="POSTBACK_TIMEOUT_SECONDS", gt=0, le=120)
    postback_allow_private_targets: bool = Field(False, alias="POSTBACK_ALLOW_PRIVATE_TARGETS")
    # Messages in flight at once (= AMQP prefetch).
    concurrency: int = Field(256, alias="DISPATCHER_CONCURRENCY", ge=1, le=10_000)
    # Consumer processes (the serving process is one of them; see workers.py);
    # 0: one per CPU this process may run on, at most AUTO_WORKERS_MAX.
    workers_setting: int = Field(0, alias="DISPATCHER_WORKERS", ge=0, le=64)
    per_host_concurrency: int = Field(32, alias="POSTBACK_PER_HOST_CONCURRENCY", ge=1, le=1000)
    breaker_failure_threshold: int = Field(5, alias="POSTBACK_BREAKER_THRESHOLD", ge=1)
    breaker_cooldown_seconds: float = Field(30.0, alias="POSTBACK_BREAKER_COOLDOWN_SECONDS", gt=0)
    settings_cache_seconds: float = Field(5.0, alias="POSTBACK_SETTINGS_CACHE_SECONDS", ge=0)
    shutdown_grace_seconds: float = Field(10.0, alias="SHUTDOWN_GRACE_SECONDS", gt=0)
    # Keys the admin-token fingerprint of operator page sessions; from ADMIN_TOKEN when empty.
    session_secret: str = Field("", alias="SESSION_SECRET", repr=False)

    @property
    def workers(self) -> int:
        """How many consumer processes to run (DISPATCHER_WORKERS, 0 resolved)."""
        return resolve_workers(self.workers_setting)
