"""``postback-dispatcher``: run the dispatcher, or operate its dead-letter queue."""

from __future__ import annotations

import os

import typer
import uvicorn
from pydantic import ValidationError

from postback_core.http_guard import server_options
from postback_core.logs import configure_logging_from
from postback_core.metrics_dir import MULTIPROC_ENV, prepare_multiprocess_dir
from postback_dispatcher.dlq_cli import dlq
from postback_dispatcher.settings import DispatcherSettings

cli = typer.Typer(
    help="Postback dispatcher: delivers conversion postbacks; operator tools for dead letters.",
    no_args_is_help=True,
    add_completion=False,
)


@cli.callback()
def _root() -> None:
    """Postback dispatcher."""


def _settings() -> DispatcherSettings:
    try:
        return DispatcherSettings()
    except ValidationError as exc:
        typer.echo(f"configuration error:\n{exc}", err=True)
        raise typer.Exit(2) from exc


@cli.command()
def serve(
    port: int | None = typer.Option(None, help="Port (default DISPATCHER_PORT)."),
    host: str | None = typer.Option(None, help="Bind address (default HOST)."),
    no_consume: bool = typer.Option(
        False, "--no-consume", help="APIs and pages only; consumers run in `consume`."
    ),
) -> None:
    """Consume conversion events and deliver postbacks; serve health and operator APIs."""
    factory = "create_api_app" if no_consume else "create_app"
    _run(f"postback_dispatcher.app:{factory}", port, host, consumer=False)


@cli.command()
def consume(
    port: int | None = typer.Option(None, help="Port (default DISPATCHER_CONSUMER_PORT)."),
    host: str | None = typer.Option(None, help="Bind address (default HOST)."),
) -> None:
    """Only consume and deliver (DISPATCHER_WORKERS processes, dead-letter archiver).

    Serves /healthz, /readyz and /metrics; the APIs and pages run in
    ``serve --no-consume``.
    """
    _run("postback_dispatcher.app:create_consumer_app", port, host, consumer=True)


def _run(app: str, port: int | None, host: str | None, *, consumer: bool) -> None:
    settings = _settings()
    configure_logging_from(settings)
    from postback_dispatcher.workers import tune_gc

    tune_gc()
    if settings.workers > 1 or os.environ.get(MULTIPROC_ENV):
        # Before the app (and prometheus_client) is imported: every consumer process
        # records into the shared files that /metrics adds up. An operator's
        # PROMETHEUS_MULTIPROC_DIR is only ever the parent of ours.
        prepare_multiprocess_dir("postback-dispatcher")
    uvicorn.run(
        app,
        factory=True,
        host=host or settings.host,
        port=port or (settings.consumer_port if consumer else settings.port),
        loop="uvloop",
        access_log=False,
        # httptools with a header deadline, keep-alive timeout, no Server header
        **server_options(settings),
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
    )


cli.add_typer(dlq, name="dlq")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
