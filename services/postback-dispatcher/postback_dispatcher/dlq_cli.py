"""``postback-dispatcher dlq``: operate the dead-letter queue through the dispatcher's API.

The CLI is a thin client of the HTTP API (never the database directly), so
it needs only the dispatcher's URL and the admin token, and it obeys the same
rules as the pages: concurrency-safe replay, purge only with confirmation.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from postback_core.enums import DeadLetterReason

dlq = typer.Typer(
    help="Inspect, replay and purge dead-lettered postbacks (talks to the dispatcher API).",
    no_args_is_help=True,
)

BULK_BATCH_SIZE = 200
API_PREFIX = "/api/v1/dead-letters"


class Api:
    """The dispatcher's dead-letter API with the admin token, failing as CLI errors."""

    def __init__(self, base_url: str, token: str, as_json: bool, timeout: float) -> None:
        self.as_json = as_json
        self.out = Console()
        self.err = Console(stderr=True)
        self.client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )

    def fail(self, message: str, code: int = 1) -> NoReturn:
        self.err.print(f"[bold red]error:[/] {message}", highlight=False)
        raise typer.Exit(code)

    def call(self, method: str, path: str = "", **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, API_PREFIX + path, **kwargs)
        except httpx.HTTPError as exc:
            self.fail(f"dispatcher unreachable at {self.client.base_url}: {exc}")
        if response.status_code >= 300 and response.status_code < 400:
            self.fail(f"unexpected redirect {response.status_code}: is --url the dispatcher?")
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            self.fail(f"{response.status_code}: {detail}")
        return response.json() if response.content else None

    def emit_json(self, data: Any) -> None:
        typer.echo(json.dumps(data, indent=2, default=str))


def _default_url() -> str:
    return os.environ.get(
        "DISPATCHER_URL", f"http://127.0.0.1:{os.environ.get('DISPATCHER_PORT', '8001')}"
    )


def _api(ctx: typer.Context, as_json: bool = False) -> Api:
    """The API client, built on first use so ``--help`` works without a token.

    ``--json`` may stand before the command or after it (``dlq list --all --json``).
    """
    if isinstance(ctx.obj, Api):
        ctx.obj.as_json = ctx.obj.as_json or as_json
        return ctx.obj
    options: dict[str, Any] = ctx.obj or {}
    root = ctx.find_root()
    if not options.get("token"):
        Console(stderr=True).print("[bold red]error:[/] set ADMIN_TOKEN or pass --token")
        raise typer.Exit(2)
    api = Api(
        options["url"] or _default_url(),
        options["token"],
        options["as_json"] or as_json,
        options["timeout"],
    )
    root.call_on_close(api.client.close)
    ctx.obj = api
    return api


@dlq.callback()
def _options(
    ctx: typer.Context,
    url: str = typer.Option(
        None,
        "--url",
        help="Dispatcher base URL (env DISPATCHER_URL; default 127.0.0.1:$DISPATCHER_PORT).",
    ),
    token: str = typer.Option(
        None, "--token", envvar="ADMIN_TOKEN", help="Admin token (env ADMIN_TOKEN)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the API's JSON (for scripts)."),
    timeout: float = typer.Option(60.0, help="HTTP timeout in seconds."),
) -> None:
    ctx.obj = {"url": url, "token": token, "as_json": as_json, "timeout": timeout}


# Filters shared by list, replay and purge.
PublisherOpt = typer.Option(None, "--publisher-id", "-p", help="Only this publisher.")
OfferOpt = typer.Option(None, "--offer-id", "-o", help="Only this offer.")
ReasonOpt = typer.Option(None, "--reason", "-r", help="Only this dead-letter reason.")
StatusOpt = typer.Option(None, "--status", "-s", help="Last HTTP status, e.g. 503.")
SinceOpt = typer.Option(None, "--since", help="Dead at or after (ISO 8601).")
UntilOpt = typer.Option(None, "--until", help="Dead before (ISO 8601).")
JsonOpt = typer.Option(False, "--json", help="Print the API's JSON (for scripts).")


def _filters(
    publisher_id: int | None,
    offer_id: int | None,
    reason: DeadLetterReason | None,
    status: int | None,
    since: datetime | None,
    until: datetime | None,
) -> dict[str, Any]:
    values = {
        "publisher_id": publisher_id,
        "offer_id": offer_id,
        "reason": reason.value if reason else None,
        "last_status": status,
        "since": _utc(since),
        "until": _utc(until),
    }
    return {k: v for k, v in values.items() if v is not None}


def _utc(moment: datetime | None) -> str | None:
    """Options without a zone are UTC (the API and the database store UTC)."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def _when(value: str | None, *, short: bool = False) -> str:
    if not value:
        return "—"
    return datetime.fromisoformat(value).strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%S")


def _money(value: str | None) -> str:
    return "—" if value is None else f"${Decimal(value):,.2f}"


def _short(value: str | None, width: int = 40) -> str:
    if not value:
        return "—"
    return value if len(value) <= width else value[: width - 1] + "…"


@dlq.command("list")
def list_dead_letters(
    ctx: typer.Context,
    publisher_id: int | None = PublisherOpt,
    offer_id: int | None = OfferOpt,
    reason: DeadLetterReason | None = ReasonOpt,
    status: int | None = StatusOpt,
    since: datetime | None = SinceOpt,
    until: datetime | None = UntilOpt,
    limit: int = typer.Option(50, min=1, max=500, help="Items per page."),
    cursor: str | None = typer.Option(None, help="Continue after this page cursor."),
    all_pages: bool = typer.Option(False, "--all", help="Follow cursors to the end."),
    as_json: bool = JsonOpt,
) -> None:
    """List open dead letters, newest first."""
    api = _api(ctx, as_json)
    params = _filters(publisher_id, offer_id, reason, status, since, until) | {"limit": limit}
    items: list[dict[str, Any]] = []
    next_cursor = cursor
    while True:
        page = api.call("GET", params=params | ({"cursor": next_cursor} if next_cursor else {}))
        items += page["items"]
        next_cursor = page["next_cursor"]
        if not all_pages or not next_cursor:
            break
    if api.as_json:
        api.emit_json({"items": items, "next_cursor": next_cursor})
        return
    # Narrow terminals drop the free-text column rather than squeezing every column.
    wide = api.out.width >= 110
    table = Table(title=f"Dead letters ({len(items)})", expand=False)
    table.add_column("ID", justify="right", no_wrap=True)
    table.add_column("Dead at (UTC)", no_wrap=True)
    table.add_column("Pub", justify="right", no_wrap=True)
    table.add_column("Offer", justify="right", no_wrap=True)
    table.add_column("Payout", justify="right", no_wrap=True)
    table.add_column("Status", justify="right", no_wrap=True)
    table.add_column("Tries", justify="right", no_wrap=True)
    table.add_column("Reason", no_wrap=True)
    if wide:
        table.add_column("Last error", overflow="ellipsis", no_wrap=True, max_width=40)
    for item in items:
        cells = [
            str(item["id"]),
            _when(item["dead_at"], short=not wide),
            str(item["publisher_id"] or "—"),
            str(item["offer_id"] or "—"),
            _money(item["payout"]),
            str(item["last_status"] or "—"),
            str(item["attempts"]),
            item["reason"],
        ]
        if wide:
            cells.append(_short(item["last_error"]))
        table.add_row(*cells)
    api.out.print(table)
    if next_cursor:
        api.out.print(f"more: --cursor {next_cursor}", highlight=False)


@dlq.command("show")
def show(
    ctx: typer.Context,
    dead_letter_id: int = typer.Argument(..., help="Dead letter id."),
    as_json: bool = JsonOpt,
) -> None:
    """One dead letter with its full attempt history."""
    api = _api(ctx, as_json)
    item = api.call("GET", f"/{dead_letter_id}")
    if api.as_json:
        api.emit_json(item)
        return
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column(overflow="fold")
    for label, value in (
        ("id", item["id"]),
        ("state", item["state"]),
        ("reason", item["reason"]),
        ("publisher", item["publisher_id"]),
        ("offer", item["offer_id"]),
        ("conversion", item["conversion_id"]),
        ("click", item["click_id"]),
        ("payout", _money(item["payout"])),
        ("url", item["url"]),
        ("attempts", item["attempts"]),
        ("last status", item["last_status"]),
        ("last error", item["last_error"]),
        ("first attempt", _when(item["first_attempt_at"])),
        ("last attempt", _when(item["last_attempt_at"])),
        ("dead at", _when(item["dead_at"])),
    ):
        summary.add_row(label, "—" if value is None else str(value))
    api.out.print(summary)
    history = Table(title="Attempt history")
    for column in ("#", "Seq", "Trigger", "Outcome", "Status", "ms", "Error", "At"):
        history.add_column(column, no_wrap=column != "Error", overflow="ellipsis")
    for attempt in item["attempt_history"]:
        history.add_row(
            str(attempt["attempt_no"]),
            str(attempt["sequence"]),
            attempt["trigger"],
            attempt["outcome"],
            str(attempt["http_status"] or "—"),
            "—" if attempt["duration_ms"] is None else f"{attempt['duration_ms']:.0f}",
            _short(attempt["error_class"] or attempt["error_message"], 30),
            _when(attempt["created_at"]),
        )
    api.out.print(history)


def _confirm(api: Api, question: str, yes: bool) -> None:
    if yes:
        return
    if not typer.confirm(question, default=False):
        api.err.print("aborted; nothing changed")
        raise typer.Exit(1)


@dlq.command("replay")
def replay(
    ctx: typer.Context,
    dead_letter_id: int | None = typer.Argument(None, help="Replay one; omit to use filters."),
    publisher_id: int | None = PublisherOpt,
    offer_id: int | None = OfferOpt,
    reason: DeadLetterReason | None = ReasonOpt,
    status: int | None = StatusOpt,
    since: datetime | None = SinceOpt,
    until: datetime | None = UntilOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Only show what would be replayed."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    batch_size: int = typer.Option(BULK_BATCH_SIZE, min=1, max=5000, help="Per API call."),
    as_json: bool = JsonOpt,
) -> None:
    """Send dead letters again through the normal pipeline (one id, or all matching)."""
    api = _api(ctx, as_json)
    filters = _filters(publisher_id, offer_id, reason, status, since, until)
    if dead_letter_id is not None:
        if filters:
            api.fail("give either an id or filters, not both", code=2)
        item = api.call("GET", f"/{dead_letter_id}")
        if dry_run:
            if api.as_json:
                api.emit_json({"dry_run": True, "count": 1, "payout_total": item["payout"]})
            else:
                api.out.print(
                    f"would replay #{item['id']} ({_money(item['payout'])}) to {item['url']}"
                )
            return
        _confirm(api, f"Replay dead letter #{dead_letter_id}?", yes or api.as_json)
        result = api.call("POST", f"/{dead_letter_id}/replay")
        if api.as_json:
            api.emit_json(result)
        else:
            api.out.print(f"replayed #{result['id']} as delivery sequence {result['sequence']}")
        return

    totals = api.call("POST", "/replay", json=filters | {"dry_run": True})
    total = int(totals["count"])
    if dry_run:
        if api.as_json:
            api.emit_json(totals)
        else:
            api.out.print(
                f"would replay {total} dead letter(s), payout {_money(totals['payout_total'])}"
            )
        return
    if total == 0:
        if api.as_json:
            api.emit_json({"count": 0, "failed": 0})
        else:
            api.out.print("nothing to replay")
        return
    _confirm(
        api,
        f"Replay {total} dead letter(s) ({_money(totals['payout_total'])} at risk)?",
        yes,
    )
    replayed = 0
    failed = 0
    with Progress(
        TextColumn("replaying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=api.err,
        disable=api.as_json,
    ) as progress:
        task = progress.add_task("replay", total=total)
        while replayed < total:
            batch = api.call(
                "POST", "/replay", json=filters | {"limit": min(batch_size, total - replayed)}
            )
            replayed += int(batch["count"])
            failed += int(batch.get("failed", 0))
            progress.update(task, completed=replayed)
            if batch["count"] == 0 or batch.get("failed"):
                break
    if api.as_json:
        api.emit_json({"count": replayed, "failed": failed})
    else:
        api.out.print(
            f"replayed {replayed} dead letter(s)" + (f", {failed} failed" if failed else "")
        )
    if failed:
        raise typer.Exit(1)


@dlq.command("purge")
def purge(
    ctx: typer.Context,
    dead_letter_id: int | None = typer.Argument(None, help="Purge one; omit to use filters."),
    publisher_id: int | None = PublisherOpt,
    offer_id: int | None = OfferOpt,
    reason: DeadLetterReason | None = ReasonOpt,
    status: int | None = StatusOpt,
    since: datetime | None = SinceOpt,
    until: datetime | None = UntilOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Only count what would be purged."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    as_json: bool = JsonOpt,
) -> None:
    """Drop dead letters for good (one id, or all matching). Asks first unless --yes."""
    api = _api(ctx, as_json)
    filters = _filters(publisher_id, offer_id, reason, status, since, until)
    if dead_letter_id is not None:
        if filters:
            api.fail("give either an id or filters, not both", code=2)
        item = api.call("GET", f"/{dead_letter_id}")
        if dry_run:
            api.out.print(f"would purge #{item['id']} ({_money(item['payout'])})")
            return
        _confirm(api, f"Purge dead letter #{dead_letter_id}? This can't be undone.", yes)
        api.call("DELETE", f"/{dead_letter_id}")
        if api.as_json:
            api.emit_json({"count": 1})
        else:
            api.out.print(f"purged #{dead_letter_id}")
        return
    totals = api.call("POST", "/purge", json=filters | {"dry_run": True})
    if dry_run:
        if api.as_json:
            api.emit_json(totals)
        else:
            api.out.print(
                f"would purge {totals['count']} dead letter(s), "
                f"payout {_money(totals['payout_total'])}"
            )
        return
    if not filters and not yes:
        api.err.print("[yellow]no filters given: this purges EVERY open dead letter[/]")
    _confirm(
        api,
        f"Purge {totals['count']} dead letter(s) ({_money(totals['payout_total'])})? "
        "This can't be undone.",
        yes,
    )
    result = api.call("POST", "/purge", json=filters | {"confirm": True})
    if api.as_json:
        api.emit_json(result)
    else:
        api.out.print(f"purged {result['count']} dead letter(s)")


@dlq.command("stats")
def stats(ctx: typer.Context, as_json: bool = JsonOpt) -> None:
    """Count and payout at risk per publisher, longest waiting first."""
    api = _api(ctx, as_json)
    data = api.call("GET", "/stats")
    if api.as_json:
        api.emit_json(data)
        return
    table = Table(title="Dead letters by publisher", show_footer=True)
    table.add_column("Publisher", "total", justify="right")
    table.add_column("Count", str(data["total_count"]), justify="right")
    table.add_column("Payout at risk", _money(data["total_payout_at_risk"]), justify="right")
    table.add_column("Oldest", no_wrap=True)
    table.add_column("Newest", no_wrap=True)
    for row in data["publishers"]:
        table.add_row(
            str(row["publisher_id"] or "—"),
            str(row["count"]),
            _money(row["payout_at_risk"]),
            _when(row["oldest_dead_at"]),
            _when(row["newest_dead_at"]),
        )
    api.out.print(table)
