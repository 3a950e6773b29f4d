"""Clicks while PostgreSQL is away: kept on disk, bounded in memory, written when it is back.

The buffer's promise: a stop or a crash (``kill -9``) during an outage loses
nothing that reached the spill file, memory stays bounded however long the
outage lasts, and every kept click is written exactly once (by this process
when the database is back, or by the next process to start).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from click_gateway.clicks.buffer import ClickBuffer, default_spill_dir
from click_gateway.clicks.spill import SUFFIX, SpillFile, encode_row
from postback_core.db.base import asyncpg_dsn
from tests.click_gateway.test_clicks_buffer import click_row, ids, stored
from tests.support.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(asyncpg_dsn(database_url), min_size=1, max_size=4)
    yield pool
    await pool.close()


def spill_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*" + SUFFIX))


def lines_on_disk(directory: Path) -> int:
    return sum(path.read_bytes().count(b"\n") for path in spill_files(directory))


async def cut_database(buffer: ClickBuffer, db: asyncpg.Pool, good_dsn: str) -> None:
    """PostgreSQL "goes away" for this buffer: its connection dies, reconnects fail."""
    assert buffer._conn is not None
    server_pid = buffer._conn.get_server_pid()
    buffer.dsn = good_dsn.rsplit("/", 1)[0] + "/no_such_database_for_clicks"
    await db.execute("SELECT pg_terminate_backend($1)", server_pid)


async def test_rows_go_to_disk_during_an_outage_and_to_the_database_after(
    database_url: str, db: asyncpg.Pool, tmp_path: Path
) -> None:
    good_dsn = asyncpg_dsn(database_url)
    buffer = ClickBuffer(good_dsn, interval_ms=20, max_rows=1000, spill_dir=tmp_path)
    await buffer.start()
    try:
        await cut_database(buffer, db, good_dsn)
        during = [ids.next_id() for _ in range(40)]
        for click_id in during:
            buffer.add(click_id, click_row(click_id, "outage"))

        async def on_disk() -> bool:
            return buffer.spilled_rows == len(during) == lines_on_disk(tmp_path)

        await wait_for(on_disk, timeout=5, message="the outage's clicks in the spill file")
        assert all(buffer.get(c) for c in during)  # still answerable from memory
        assert await stored(db, during) == 0

        buffer.dsn = good_dsn

        async def written() -> bool:
            return await stored(db, during) == len(during)

        await wait_for(written, timeout=5, message="spilled clicks written after the outage")
        # Stored once each, and the file starts over.
        assert await db.fetchval(
            "SELECT count(DISTINCT click_id) = count(*) FROM clicks WHERE click_id = ANY($1)",
            during,
        )
        await wait_for(lambda: _true(lines_on_disk(tmp_path) == 0), message="spill file emptied")
    finally:
        await buffer.stop()
    assert spill_files(tmp_path) == []  # an empty file is removed at stop


async def test_memory_stays_bounded_in_a_long_outage(
    database_url: str, db: asyncpg.Pool, tmp_path: Path
) -> None:
    good_dsn = asyncpg_dsn(database_url)
    buffer = ClickBuffer(good_dsn, interval_ms=20, max_rows=1000, capacity=10, spill_dir=tmp_path)
    await buffer.start()
    try:
        await cut_database(buffer, db, good_dsn)
        clicks: list[int] = []
        for _ in range(6):  # several flush rounds of the outage
            batch = [ids.next_id() for _ in range(10)]
            for click_id in batch:
                assert buffer.has_room()  # never refused: rows on disk can leave memory
                buffer.add(click_id, click_row(click_id))
            clicks += batch
            await wait_for(
                lambda n=len(clicks): _true(buffer.spilled_rows == n),
                timeout=5,
                message="the batch on disk",
            )
            assert lines_on_disk(tmp_path) == len(clicks)
        assert len(buffer.in_flight) + len(buffer.pending) <= 10
        assert buffer.has_backlog

        buffer.dsn = good_dsn

        async def written() -> bool:
            return await stored(db, clicks) == len(clicks)

        await wait_for(written, timeout=10, message="every click of the long outage written")
        assert await buffer.wait_backlog_written(5)
    finally:
        await buffer.stop()


async def test_a_stop_during_an_outage_leaves_the_clicks_for_the_next_start(
    database_url: str, db: asyncpg.Pool, tmp_path: Path
) -> None:
    good_dsn = asyncpg_dsn(database_url)
    first = ClickBuffer(good_dsn, interval_ms=20, max_rows=1000, spill_dir=tmp_path)
    await first.start()
    await cut_database(first, db, good_dsn)
    kept = [ids.next_id() for _ in range(25)]
    for click_id in kept:
        first.add(click_id, click_row(click_id, "kept"))
    await first.stop()  # the database never came back for it
    assert lines_on_disk(tmp_path) == len(kept)
    assert await stored(db, kept) == 0

    second = ClickBuffer(good_dsn, interval_ms=20, max_rows=1000, spill_dir=tmp_path)
    await second.start()
    try:

        async def written() -> bool:
            return await stored(db, kept) == len(kept)

        await wait_for(written, timeout=5, message="the next start writes the kept clicks")
        await wait_for(lambda: _true(spill_files(tmp_path) == []), message="adopted file removed")
    finally:
        await second.stop()


KILLED_WRITER = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    import asyncpg
    from click_gateway.clicks.buffer import ClickBuffer
    from tests.click_gateway.test_clicks_buffer import click_row, ids

    async def main() -> None:
        dsn, spill_dir, count = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
        buffer = ClickBuffer(dsn, interval_ms=20, max_rows=1000, spill_dir=spill_dir)
        await buffer.start()
        pid = buffer._conn.get_server_pid()
        buffer.dsn = dsn.rsplit("/", 1)[0] + "/no_such_database_for_clicks"
        admin = await asyncpg.connect(dsn)
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
        await admin.close()
        click_ids = [ids.next_id() for _ in range(count)]
        for click_id in click_ids:
            buffer.add(click_id, click_row(click_id, "killed"))
        while buffer.spilled_rows < count:
            await asyncio.sleep(0.01)
        print(",".join(map(str, click_ids)), flush=True)
        await asyncio.sleep(3600)  # killed here, with no chance to clean up

    asyncio.run(main())
    """
)


async def test_kill_9_during_an_outage_loses_nothing_that_reached_the_disk(
    database_url: str, db: asyncpg.Pool, tmp_path: Path
) -> None:
    good_dsn = asyncpg_dsn(database_url)
    writer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        KILLED_WRITER,
        good_dsn,
        str(tmp_path),
        "30",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert writer.stdout is not None
        line = await asyncio.wait_for(writer.stdout.readline(), 30)
        kept = [int(part) for part in line.decode().strip().split(",")]
    finally:
        writer.send_signal(signal.SIGKILL)
        await writer.wait()
    assert len(kept) == 30

    survivor = ClickBuffer(good_dsn, interval_ms=20, max_rows=1000, spill_dir=tmp_path)
    await survivor.start()
    try:

        async def written() -> bool:
            return await stored(db, kept) == len(kept)

        await wait_for(written, timeout=5, message="a killed process's clicks written by the next")
    finally:
        await survivor.stop()


async def test_a_torn_last_line_is_skipped_and_the_rest_written(
    database_url: str, db: asyncpg.Pool, tmp_path: Path
) -> None:
    whole = [ids.next_id() for _ in range(3)]
    torn = ids.next_id()
    orphan = tmp_path / f"clicks-elsewhere-1-dead{SUFFIX}"
    data = b"".join(encode_row(click_row(c)) for c in whole) + encode_row(click_row(torn))[:-9]
    orphan.write_bytes(data)

    buffer = ClickBuffer(
        asyncpg_dsn(database_url), interval_ms=20, max_rows=1000, spill_dir=tmp_path
    )
    await buffer.start()
    try:

        async def written() -> bool:
            return await stored(db, whole) == 3

        await wait_for(written, timeout=5, message="the whole lines of an orphan file")
        assert await stored(db, [torn]) == 0
        await wait_for(lambda: _true(not orphan.exists()), message="orphan removed")
    finally:
        await buffer.stop()


def test_a_live_processs_file_is_not_adopted_and_directories_are_per_database(
    tmp_path: Path,
) -> None:
    mine = SpillFile.create(tmp_path)
    try:
        assert SpillFile.adopt_orphans(tmp_path) == []  # its owner (us) still holds it
    finally:
        mine.remove()
    a = default_spill_dir("postgresql://postgres@127.0.0.1:5432/one")
    b = default_spill_dir("postgresql://postgres@127.0.0.1:5432/two")
    assert a != b and a.parent == b.parent


async def _true(value: bool) -> bool:
    return value
