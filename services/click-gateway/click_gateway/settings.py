"""Gateway configuration, read from the environment (see .env.example)."""

from __future__ import annotations

from pydantic import Field

from postback_core.settings import HTTPServiceSettings, resolve_workers


class GatewaySettings(HTTPServiceSettings):
    port: int = Field(8000, alias="GATEWAY_PORT", ge=1, le=65535)
    # uvicorn worker processes; 0: one per CPU this process may run on, at most 4.
    workers_setting: int = Field(0, alias="GATEWAY_WORKERS", ge=0, le=64)
    # Where SmartLink URLs point, e.g. https://go.example.com; default: this server.
    public_base_url: str = Field("", alias="PUBLIC_BASE_URL")
    # Click writes are buffered and flushed with COPY: whichever comes first.
    click_flush_interval_ms: int = Field(100, alias="CLICK_FLUSH_INTERVAL_MS", ge=5, le=900)
    click_flush_max_rows: int = Field(5000, alias="CLICK_FLUSH_MAX_ROWS", ge=1, le=100_000)
    # Where clicks go while PostgreSQL is away (a persistent volume in production);
    # empty: a directory per database under the system's temporary directory.
    click_spill_dir: str = Field("", alias="CLICK_SPILL_DIR")
    click_retention_days: int = Field(90, alias="CLICK_RETENTION_DAYS", ge=1)
    # How often the SmartLink/offer cache looks for changes.
    cache_refresh_seconds: float = Field(2.0, alias="CACHE_REFRESH_SECONDS", gt=0, le=60)
    outbox_batch_size: int = Field(500, alias="OUTBOX_BATCH_SIZE", ge=1, le=10_000)
    outbox_poll_seconds: float = Field(1.0, alias="OUTBOX_POLL_SECONDS", gt=0, le=60)
    max_payout: str = Field("10000", alias="MAX_PAYOUT")
    # After a key rotation, the old advertiser or publisher key works this much longer.
    api_key_grace_seconds: int = Field(
        86_400, alias="API_KEY_GRACE_SECONDS", ge=0, le=30 * 24 * 3600
    )
    # How often the scheduled job looks for held conversions whose hold ended.
    hold_check_seconds: float = Field(30.0, alias="HOLD_CHECK_SECONDS", gt=0, le=3600)

    @property
    def workers(self) -> int:
        """How many uvicorn worker processes to run (GATEWAY_WORKERS, 0 resolved)."""
        return resolve_workers(self.workers_setting)
