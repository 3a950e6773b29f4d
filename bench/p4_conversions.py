"""P4 - the conversion API with the transactional outbox: conversions/s.

CLIENTS closed-loop clients (lean raw-asyncio HTTP, in the bench process) POST
/api/v1/conversions with an advertiser X-Api-Key, each request a new conversion
(a pool of real clicks, a unique txid per request), so every answer is a 201 that
wrote a conversion row and its outbox row in one transaction. The gateway's
relay publishes the outbox to RabbitMQ meanwhile (no dispatcher runs).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from bench.common import (
    CpuAccount,
    Result,
    drop_outbox_notify_if_asked,
    infrastructure,
    pg_activity,
    say,
    tree_cpu_seconds,
)
from bench.openloop import closed_loop
from bench.p3_end_to_end import (
    SIMPLE_OFFER,
    conversion_request,
    prepare_clicks,
    probe_conversions_api,
)
from bench.seed import seed_click_scenario
from bench.services import gateway

CLIENTS = 64
SIZES = {
    "quick": {"clicks": 200, "warmup": 0.5, "duration": 1.5},
    "full": {"clicks": 2_000, "warmup": 2.0, "duration": 10.0},
}


async def run(mode: str, result: Result) -> None:
    cfg = SIZES[mode]
    result.notes.append(
        f"{CLIENTS} concurrent clients, {cfg['duration']:.0f}s after {cfg['warmup']}s warm-up; "
        f"{cfg['clicks']} clicks, unique txid per request (every answer a new conversion)"
    )
    async with infrastructure("p4") as infra:
        await drop_outbox_notify_if_asked(infra, result)
        await _measure(infra, cfg, result)


async def _measure(infra: Any, cfg: dict[str, Any], result: Result) -> None:
    async with gateway(infra, "p4-gateway") as (_gw, base):
        seeded = await seed_click_scenario(base, infra.dsn, offers=SIMPLE_OFFER)
        result.figures["seeded_via"] = seeded.ways
        clicks = await prepare_clicks(base, seeded, cfg["clicks"])
        await probe_conversions_api(base, seeded.advertiser_key, clicks[0])
        port = int(base.rsplit(":", 1)[1])
        key = seeded.advertiser_key

        def request_for(prefix: str) -> Any:
            return lambda i: conversion_request(key, clicks[i % len(clicks)], f"{prefix}{i}")

        await closed_loop("127.0.0.1", port, CLIENTS, cfg["warmup"], request_for("w"))
        activity: dict[str, Any] = {}
        cpu = tree_cpu_seconds(_gw.pid)
        account = CpuAccount(infra.dsn)
        account.start()
        async with pg_activity(infra.dsn, activity):
            measured = await closed_loop(
                "127.0.0.1", port, CLIENTS, cfg["duration"], request_for("m")
            )
        result.figures["cpu_during_load"] = account.stop(
            max(1, measured.completed), measured.elapsed_s
        )
        result.figures["cpu_during_load"][
            "postgres_us_per_unit_by_application"
        ] = await account.postgres_by_application(max(1, measured.completed))
        result.figures["db_activity_during_load"] = activity
        summary = measured.summary()
        created = measured.statuses.get(201, 0)
        summary["created_per_s"] = round(created / measured.elapsed_s, 1)
        # Gateway CPU per conversion, and its share of one core during the run.
        used = tree_cpu_seconds(_gw.pid) - cpu
        summary["gateway_cpu_us_per_request"] = round(used / max(1, measured.completed) * 1e6, 1)
        summary["gateway_cpu_share_of_one_core"] = round(used / measured.elapsed_s, 2)
        result.figures["conversion_api"] = summary
        say(f"{created:,} conversions created: {summary['created_per_s']:,.0f}/s")

        # The outbox must keep up too: how long until every row is published?
        conn = await asyncpg.connect(infra.dsn)
        try:
            start = time.monotonic()
            pending = None
            while time.monotonic() - start < 10:
                pending = await conn.fetchval(
                    "SELECT count(*) FROM outbox WHERE published_at IS NULL"
                )
                if pending == 0:
                    break
                await asyncio.sleep(0.1)
            total = await conn.fetchval("SELECT count(*) FROM outbox")
            result.figures["outbox"] = {
                "rows": total,
                "unpublished_after_wait": pending,
                "drained_after_s": round(time.monotonic() - start, 2) if pending == 0 else None,
            }
        finally:
            await conn.close()
        result.target(
            f"conversions/s with {CLIENTS} clients", summary["created_per_s"], ">=", 2000.0, "/s"
        )
