"""``postback-dispatcher dlq``: the operator CLI against a real dispatcher API.

The CLI is synchronous (httpx.Client), so it runs in a worker thread while the
dispatcher under test keeps serving on the session's event loop.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

from click.testing import Result
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import CliRunner

from postback_core.db.models import DeadLetter
from postback_dispatcher.cli import cli
from tests.postback_dispatcher.portal_fixtures import (
    EventTap,
    create_publisher,
    insert_dead_letter,
)
from tests.support.polling import wait_for
from tests.support.servers import free_port

Db = async_sessionmaker[AsyncSession]


async def dlq(url: str, *args: str, input: str | None = None, columns: int = 160) -> Result:
    runner = CliRunner()
    return await asyncio.to_thread(
        runner.invoke,
        cli,
        ["dlq", "--url", url, *args],
        input=input,
        env={"COLUMNS": str(columns)},
    )


async def _states(db: Db, *ids: int) -> list[str]:
    async with db() as session:
        rows = await session.execute(
            select(DeadLetter.id, DeadLetter.state).where(DeadLetter.id.in_(ids))
        )
        by_id = dict(rows.all())
    return [by_id[i] for i in ids]


async def test_list_prints_a_table_and_json(portal_url: str, db: Db) -> None:
    publisher = await create_publisher(db)
    row = await insert_dead_letter(db, publisher_id=publisher.id, payout="1.50", last_status=502)

    table = await dlq(portal_url, "list", "--publisher-id", str(publisher.id))
    assert table.exit_code == 0, table.output
    assert "Dead letters (1)" in table.output
    assert str(row.id) in table.output
    assert "$1.50" in table.output
    assert "502" in table.output

    as_json = await dlq(portal_url, "--json", "list", "-p", str(publisher.id), "--status", "502")
    assert as_json.exit_code == 0
    assert [i["id"] for i in json.loads(as_json.stdout)["items"]] == [row.id]


async def test_list_all_follows_cursors(portal_url: str, db: Db) -> None:
    publisher = await create_publisher(db)
    rows = [await insert_dead_letter(db, publisher_id=publisher.id) for _ in range(5)]
    result = await dlq(
        portal_url, "--json", "list", "-p", str(publisher.id), "--limit", "2", "--all"
    )
    assert result.exit_code == 0, result.output
    assert sorted(i["id"] for i in json.loads(result.stdout)["items"]) == sorted(r.id for r in rows)


async def test_show_prints_the_attempt_history(portal_url: str, db: Db) -> None:
    publisher = await create_publisher(db)
    row = await insert_dead_letter(db, publisher_id=publisher.id, attempts=3)
    result = await dlq(portal_url, "show", str(row.id))
    assert result.exit_code == 0, result.output
    assert "Attempt history" in result.output
    assert result.output.count("│ HTTP503") == 3  # one row per attempt
    missing = await dlq(portal_url, "show", "999999999")
    assert missing.exit_code == 1
    assert "404" in missing.output


async def test_replay_one_then_again_fails_with_non_zero_exit(
    portal_url: str, db: Db, event_tap: EventTap
) -> None:
    publisher = await create_publisher(db)
    row = await insert_dead_letter(db, publisher_id=publisher.id)

    declined = await dlq(portal_url, "replay", str(row.id), input="n\n")
    assert declined.exit_code == 1
    assert await _states(db, row.id) == ["dead"]

    first = await dlq(portal_url, "replay", str(row.id), "--yes")
    assert first.exit_code == 0, first.output
    assert "sequence 1" in first.output
    assert await _states(db, row.id) == ["replayed"]
    await wait_for(event_tap.drain, message="the replayed event")

    second = await dlq(portal_url, "replay", str(row.id), "--yes")
    assert second.exit_code == 1
    assert "409" in second.output


async def test_bulk_replay_dry_run_then_confirmed_run(
    portal_url: str, db: Db, event_tap: EventTap
) -> None:
    publisher = await create_publisher(db)
    rows = [
        await insert_dead_letter(db, publisher_id=publisher.id, payout=p)
        for p in ("0.10", "0.20", "0.30")
    ]

    dry = await dlq(portal_url, "--json", "replay", "-p", str(publisher.id), "--dry-run")
    assert dry.exit_code == 0
    totals = json.loads(dry.stdout)
    assert totals["count"] == 3
    assert Decimal(totals["payout_total"]) == Decimal("0.60")

    declined = await dlq(portal_url, "replay", "-p", str(publisher.id), input="n\n")
    assert declined.exit_code == 1
    assert "Replay 3 dead letter(s) ($0.60 at risk)?" in declined.output
    assert await _states(db, *(r.id for r in rows)) == ["dead"] * 3

    done = await dlq(
        portal_url, "replay", "-p", str(publisher.id), "--batch-size", "2", input="y\n"
    )
    assert done.exit_code == 0, done.output
    assert "replayed 3 dead letter(s)" in done.output
    assert await _states(db, *(r.id for r in rows)) == ["replayed"] * 3


async def test_purge_asks_first_and_yes_skips_the_question(portal_url: str, db: Db) -> None:
    publisher = await create_publisher(db)
    rows = [
        await insert_dead_letter(db, publisher_id=publisher.id, reason="permanent_http_4xx")
        for _ in range(2)
    ]
    single = await insert_dead_letter(db, publisher_id=publisher.id, reason="exhausted")

    dry = await dlq(
        portal_url, "purge", "-p", str(publisher.id), "-r", "permanent_http_4xx", "--dry-run"
    )
    assert dry.exit_code == 0
    assert "would purge 2" in dry.output

    declined = await dlq(
        portal_url, "purge", "-p", str(publisher.id), "-r", "permanent_http_4xx", input="n\n"
    )
    assert declined.exit_code == 1
    assert await _states(db, *(r.id for r in rows)) == ["dead", "dead"]

    purged = await dlq(
        portal_url, "--json", "purge", "-p", str(publisher.id), "-r", "permanent_http_4xx", "--yes"
    )
    assert purged.exit_code == 0, purged.output
    assert json.loads(purged.stdout) == {"count": 2}
    assert await _states(db, *(r.id for r in rows)) == ["purged", "purged"]

    one = await dlq(portal_url, "purge", str(single.id), "--yes")
    assert one.exit_code == 0
    assert await _states(db, single.id) == ["purged"]


async def test_stats_table_and_json(portal_url: str, db: Db) -> None:
    publisher = await create_publisher(db)
    await insert_dead_letter(db, publisher_id=publisher.id, payout="2.25")
    result = await dlq(portal_url, "stats")
    assert result.exit_code == 0, result.output
    assert "Payout at risk" in result.output
    data = json.loads((await dlq(portal_url, "--json", "stats")).stdout)
    mine = next(p for p in data["publishers"] if p["publisher_id"] == publisher.id)
    assert Decimal(mine["payout_at_risk"]) == Decimal("2.25")


async def test_failures_exit_non_zero(portal_url: str) -> None:
    unreachable = await dlq(f"http://127.0.0.1:{free_port()}", "stats")
    assert unreachable.exit_code == 1
    assert "unreachable" in unreachable.output

    runner = CliRunner()
    wrong_token = await asyncio.to_thread(
        runner.invoke, cli, ["dlq", "--url", portal_url, "--token", "wrong-token", "stats"]
    )
    assert wrong_token.exit_code == 1
    assert "401" in wrong_token.output


async def test_tables_fit_an_80_column_terminal(portal_url: str, db: Db) -> None:
    publisher = await create_publisher(db)
    row = await insert_dead_letter(db, publisher_id=publisher.id, attempts=2)
    for args in (("list", "-p", str(publisher.id)), ("show", str(row.id)), ("stats",)):
        result = await dlq(portal_url, *args, columns=80)
        assert result.exit_code == 0, result.output
        widest = max(len(line) for line in result.output.splitlines())
        assert widest <= 80, result.output


async def test_list_all_json_works_as_the_docs_write_it(portal_url: str, db: Db) -> None:
    """``dlq list --all --json`` (options after the command) pages through everything."""
    publisher = await create_publisher(db)
    rows = [await insert_dead_letter(db, publisher_id=publisher.id) for _ in range(3)]
    result = await dlq(
        portal_url, "list", "-p", str(publisher.id), "--limit", "1", "--all", "--json"
    )
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert sorted(i["id"] for i in listed["items"]) == sorted(r.id for r in rows)
    assert listed["next_cursor"] is None


async def test_reasons_are_the_stored_ones_and_unknown_ones_are_refused(
    portal_url: str, db: Db
) -> None:
    publisher = await create_publisher(db)
    refused = await insert_dead_letter(db, publisher_id=publisher.id, reason="permanent_http_4xx")
    await insert_dead_letter(db, publisher_id=publisher.id, reason="exhausted")

    help_text = await dlq(portal_url, "list", "--help", columns=400)
    assert "permanent_http_4xx" in help_text.output
    assert "permanent|" not in help_text.output and "permanent," not in help_text.output

    unknown = await dlq(portal_url, "list", "-p", str(publisher.id), "-r", "permanent")
    assert unknown.exit_code == 2
    assert "permanent" in unknown.output and "is not one of" in unknown.output

    found = await dlq(
        portal_url, "list", "-p", str(publisher.id), "-r", "permanent_http_4xx", "--json"
    )
    assert found.exit_code == 0, found.output
    assert [i["id"] for i in json.loads(found.stdout)["items"]] == [refused.id]
