"""Settings bases shared by both services.

Each service declares its own ``BaseSettings`` subclass on top of these so
configuration is read from the environment once, validated at start-up and
refused early when it is unsafe (fail fast on bad config).
"""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from postback_core.amqp import broker_urls

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postback"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_RETRY_DELAYS = (5, 300, 1800, 7200, 18000, 36000, 36000)
# Worker processes when a service's *_WORKERS setting is 0 (auto): one per CPU, at most this.
AUTO_WORKERS_MAX = 4

# Values that look like someone forgot to set a real secret.
PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "change_me", "secret", "admin", "token", "dev", "test", "xxx"}
)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def resolve_workers(setting: int) -> int:
    """A *_WORKERS setting: as given when positive; 0 means one per CPU, at most AUTO_WORKERS_MAX.

    One Python process runs on one core; a box with more cores needs more
    processes to use them.
    """
    if setting > 0:
        return setting
    return max(1, min(available_cpus(), AUTO_WORKERS_MAX))


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class CommonSettings(BaseSettings):
    """What every process needs: where the database and broker are, who is admin."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    env: Literal["dev", "test", "production"] = Field("production", alias="ENV")
    database_url: str = Field(DEFAULT_DATABASE_URL, alias="DATABASE_URL")
    amqp_url: str = Field(DEFAULT_AMQP_URL, alias="AMQP_URL")
    admin_token: str = Field("", alias="ADMIN_TOKEN", repr=False)
    log_level: str = Field("INFO", alias="LOG_LEVEL")
    # json | text; empty: text in dev, JSON lines everywhere else.
    log_format: Literal["json", "text", ""] = Field("", alias="LOG_FORMAT")
    # Delays between postback attempts; both services need them because the
    # retry tiers are part of the shared queue topology.
    postback_retry_delays: Annotated[tuple[float, ...], NoDecode] = Field(
        DEFAULT_RETRY_DELAYS, alias="POSTBACK_RETRY_DELAYS"
    )
    db_pool_size: int = Field(10, alias="DB_POOL_SIZE", ge=1, le=200)

    @field_validator("postback_retry_delays", mode="before")
    @classmethod
    def _parse_delays(cls, value: object) -> object:
        value = _split_csv(value)
        if isinstance(value, list):
            delays = tuple(float(v) for v in value)
            if any(d <= 0 for d in delays):
                raise ValueError("every retry delay must be a positive number of seconds")
            return delays
        return value

    @field_validator("amqp_url")
    @classmethod
    def _broker_urls(cls, value: str) -> str:
        return ",".join(broker_urls(value))

    @field_validator("database_url")
    @classmethod
    def _asyncpg_driver(cls, value: str) -> str:
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            value = "postgresql+asyncpg://" + value.split("://", 1)[1]
        if not value.startswith("postgresql+asyncpg://"):
            raise ValueError("DATABASE_URL must be a postgresql+asyncpg:// URL")
        return value

    @model_validator(mode="after")
    def _admin_token_is_real(self) -> CommonSettings:
        if self.env != "dev" and (
            self.admin_token.strip().lower() in PLACEHOLDER_SECRETS or len(self.admin_token) < 16
        ):
            raise ValueError(
                "ADMIN_TOKEN must be set to a real secret (16+ characters) unless ENV=dev"
            )
        return self

    @property
    def is_dev(self) -> bool:
        return self.env == "dev"

    @property
    def log_json(self) -> bool:
        return self.log_format == "json" or (self.log_format == "" and not self.is_dev)


class HTTPServiceSettings(CommonSettings):
    """Bases for a process that serves HTTP (both of ours do)."""

    trusted_proxies: Annotated[
        tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...], NoDecode
    ] = Field((), alias="TRUSTED_PROXIES")
    host: str = Field("127.0.0.1", alias="HOST")
    # Request bodies larger than this are refused with 413 before they are parsed.
    max_request_body_bytes: int = Field(
        1024 * 1024, alias="MAX_REQUEST_BODY_BYTES", ge=1024, le=1024**3
    )
    # Failed authentications per client address within the window before 429.
    auth_failure_limit: int = Field(20, alias="AUTH_FAILURE_LIMIT", ge=1, le=100_000)
    auth_failure_window_seconds: float = Field(
        60.0, alias="AUTH_FAILURE_WINDOW_SECONDS", gt=0, le=86_400
    )
    # A connection must deliver a request's headers within this many seconds.
    http_header_timeout_seconds: float = Field(
        10.0, alias="HTTP_HEADER_TIMEOUT_SECONDS", gt=0, le=300
    )
    # An idle keep-alive connection is closed after this many seconds.
    http_keep_alive_timeout_seconds: int = Field(
        5, alias="HTTP_KEEP_ALIVE_TIMEOUT_SECONDS", ge=1, le=300
    )

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _parse_networks(cls, value: object) -> object:
        value = _split_csv(value)
        if isinstance(value, list):
            return tuple(ipaddress.ip_network(v, strict=False) for v in value)
        return value
