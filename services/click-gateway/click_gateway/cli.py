"""``click-gateway``: run the gateway or migrate its database."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

import typer
import uvicorn
from pydantic import ValidationError

from click_gateway.settings import GatewaySettings
from postback_core.http_guard import server_options
from postback_core.logs import configure_logging_from
from postback_core.metrics_dir import MULTIPROC_ENV, prepare_multiprocess_dir
from postback_core.process import name_this_process

if TYPE_CHECKING:
    from click_gateway.app import GatewayApp

# The app (and with it prometheus_client, which picks in-memory or multiprocess
# storage when first imported) is imported only once ``serve`` has set up the
# metrics directory, never at this module's import.

cli = typer.Typer(
    help="SmartLink click gateway: redirects, click recording, admin and conversion APIs.",
    no_args_is_help=True,
    add_completion=False,
)
log = logging.getLogger("click_gateway")
# uvicorn kills a worker that does not answer its supervisor's ping in time, and a
# new worker answers only once its imports are done (the user-agent parser compiles
# its rules): on a throttled or busy CPU that takes well over uvicorn's 5 s default,
# and every replacement would be killed the same way.
WORKER_HEALTHCHECK_SECONDS = 60


def _settings() -> GatewaySettings:
    try:
        return GatewaySettings()
    except ValidationError as exc:
        typer.echo(f"configuration error:\n{exc}", err=True)
        raise typer.Exit(2) from exc


def _migrate(settings: GatewaySettings) -> None:
    from click_gateway.runtime import declare_broker_topology
    from postback_core.db.base import ensure_database, run_migrations

    if asyncio.run(ensure_database(settings.database_url)):
        log.info("created database")
    run_migrations(settings.database_url)
    log.info("database migrated to head")
    try:
        asyncio.run(declare_broker_topology(settings))
        log.info("broker topology declared")
    except Exception as exc:  # the relay declares it again once the broker is up
        log.warning("broker not reachable, topology not declared yet: %s", exc)


@cli.command()
def migrate() -> None:
    """Create the database if missing, apply migrations, declare the queue topology."""
    os.environ.pop(MULTIPROC_ENV, None)  # a one-shot: it records no metrics
    settings = _settings()
    configure_logging_from(settings)
    _migrate(settings)


@cli.command()
def serve(
    port: int | None = typer.Option(None, help="Port (default GATEWAY_PORT)."),
    host: str | None = typer.Option(None, help="Bind address (default HOST)."),
    workers: int | None = typer.Option(None, help="Worker processes (default GATEWAY_WORKERS)."),
    migrate_first: bool = typer.Option(
        True, "--migrate/--no-migrate", help="Create/migrate the database before serving."
    ),
) -> None:
    """Serve the gateway (Ctrl-C or SIGTERM stops it after flushing buffered clicks)."""
    settings = _settings()
    configure_logging_from(settings)
    worker_count = workers or settings.workers
    if worker_count > 1 or os.environ.get(MULTIPROC_ENV):
        # Each worker records its own metrics; /metrics (any worker) adds them all up.
        # An operator's PROMETHEUS_MULTIPROC_DIR is only ever the parent of ours.
        prepare_multiprocess_dir("click-gateway")
    if migrate_first:
        _migrate(settings)
    uvicorn.run(
        "click_gateway.cli:serving_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=worker_count,
        loop="uvloop",
        access_log=False,
        proxy_headers=False,  # we read X-Forwarded-For ourselves, only from TRUSTED_PROXIES
        # httptools with a header deadline, keep-alive timeout, no Server header
        **server_options(settings),
        log_config=None,
        timeout_graceful_shutdown=int(max(5, settings.click_flush_interval_ms / 1000 + 5)),
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
    )


def serving_app() -> GatewayApp:
    """The app factory ``serve`` gives uvicorn; runs in each worker process.

    Workers are spawned fresh (not forked), so each sets up its own logging.
    """
    from click_gateway.app import create_app

    name_this_process("click-gateway")
    settings = _settings()
    configure_logging_from(settings)
    return create_app(settings)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
