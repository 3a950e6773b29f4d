"""P5 - growth: does anything get slower or bigger as backlogs grow?

a) Dispatcher memory with a small vs a large work-queue backlog. A slow receiver
   (answers after RECEIVER_DELAY_MS) keeps the backlog in place while we sample
   VmRSS (summed over the process tree) from /proc every 100 ms; the figure is the
   peak of the window.
b) Fresh-postback throughput (as P2) with nothing vs many messages waiting in the
   longest retry tier (published straight into it; its TTL is hours).
c) Dead-letter list page (GET /api/v1/dead-letters?limit=50, admin bearer) with
   few vs many stored dead letters (rows inserted with generate_series).

Each part is independent: one that cannot run yet is reported as skipped.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import orjson

from bench.common import (
    ADMIN_TOKEN,
    Infra,
    Result,
    Skipped,
    infrastructure,
    process_tree,
    say,
    tree_rss_kib,
    wait_for_written_back,
)
from bench.events import publish_events, purge_queue, queue_depth
from bench.p2_dispatcher import dispatcher_env, dispatcher_throughput
from bench.seed import seed_postback_publishers
from bench.services import dispatcher, receiver
from postback_core.settings import DEFAULT_RETRY_DELAYS
from postback_core.topology import WORK_QUEUE, retry_queue_name

SIZES = {
    "quick": {
        "rss": (200, 2_000),
        "rss_settle_s": 0.2,
        "rss_window_s": 0.5,
        "fresh": 1_000,
        "retry": 2_000,
        "dead": (1_000, 10_000),
        "page_requests": 20,
        "first_arrival_timeout": 8.0,
        "order": "AB",
        # A smoke test: one dispatcher process starts in ~1.5 s instead of ~3.3 s.
        "workers": 1,
    },
    "full": {
        "rss": (10_000, 500_000),
        "rss_settle_s": 3.0,
        "rss_window_s": 4.0,
        "fresh": 20_000,
        "retry": 100_000,
        "dead": (1_000, 1_000_000),
        "page_requests": 200,
        "first_arrival_timeout": 30.0,
        "order": "ABBABAAB",
        "workers": None,  # the default: one consumer process per core
    },
}
RECEIVER_DELAY_MS = 250
PUBLISHERS = 10


async def _rss_part(infra: Infra, cfg: dict[str, Any], result: Result) -> None:
    small, large = cfg["rss"]
    figures: dict[str, Any] = {"receiver_delay_ms": RECEIVER_DELAY_MS}
    async with receiver("p5-slow-receiver", delay_ms=RECEIVER_DELAY_MS) as rcv:
        publisher_ids = await seed_postback_publishers(infra.dsn, rcv.base, PUBLISHERS)
        next_id = 1
        for label, size in (("small", small), ("large", large)):
            await purge_queue(infra.amqp_url, WORK_QUEUE)
            published = await publish_events(
                infra.amqp_url, range(next_id, next_id + size), publisher_ids
            )
            next_id += size
            await rcv.reset()
            async with dispatcher(
                infra, f"p5-rss-{label}", **dispatcher_env(workers=cfg["workers"])
            ) as (
                proc,
                _b,
            ):
                deadline = time.monotonic() + cfg["first_arrival_timeout"]
                while await rcv.count() == 0:
                    if time.monotonic() > deadline:
                        raise Skipped("dispatcher delivered nothing (consumer not implemented?)")
                    await asyncio.sleep(0.1)
                await asyncio.sleep(cfg["rss_settle_s"])
                samples: list[int] = []
                processes = len(process_tree(proc.pid))
                end = time.monotonic() + cfg["rss_window_s"]
                while time.monotonic() < end:
                    # The whole process tree (DISPATCHER_WORKERS > 1 runs children).
                    samples.append(tree_rss_kib(proc.pid))
                    await asyncio.sleep(0.1)
                depth = await queue_depth(infra.amqp_url, WORK_QUEUE)
            say(f"RSS with {size:,} queued: peak {max(samples) / 1024:.1f} MiB")
            figures[label] = {
                "queued_at_start": size,
                "dispatcher_processes": processes,
                "ready_in_queue_after_window": depth,
                "delivered_during_window": await rcv.count(),
                "rss_peak_mib": round(max(samples) / 1024, 1),
                "rss_mean_mib": round(statistics.fmean(samples) / 1024, 1),
                "prefill": published,
            }
    ratio = figures["large"]["rss_peak_mib"] / figures["small"]["rss_peak_mib"]
    figures["ratio_large_over_small"] = round(ratio, 3)
    result.figures["rss"] = figures
    result.target(
        f"dispatcher RSS, {large:,} vs {small:,} queued (ratio)", round(ratio, 3), "<=", 1.10
    )


async def _retry_tier_part(infra: Infra, cfg: dict[str, Any], result: Result) -> None:
    """Fresh-postback throughput without (A) and with (B) a backlog in the longest tier.

    The runs alternate in the order ``cfg["order"]`` (full: A-B-B-A-B-A-A-B), the
    backlog published before a B and purged before an A, so that slow drift of
    a shared machine (and warm caches) falls on both sides alike; the figure is
    the ratio of the two sides' mean rates.
    """
    fresh, waiting = cfg["fresh"], cfg["retry"]
    tier = max(DEFAULT_RETRY_DELAYS)
    tier_queue = retry_queue_name(tier)
    runs: list[dict[str, Any]] = []
    backlog: dict[str, Any] | None = None
    loaded = False
    async with receiver("p5-fast-receiver") as rcv:
        publisher_ids = await seed_postback_publishers(infra.dsn, rcv.base, PUBLISHERS)
        next_id = 10_000_000
        for n, side in enumerate(cfg["order"], start=1):
            want_backlog = side == "B"
            if want_backlog and not loaded:
                published = await publish_events(
                    infra.amqp_url,
                    range(next_id, next_id + waiting),
                    publisher_ids,
                    into_retry_tier=tier,
                )
                next_id += waiting
                backlog = {
                    "queue": tier_queue,
                    "depth": await queue_depth(infra.amqp_url, tier_queue),
                    **published,
                }
            elif loaded and not want_backlog:
                await purge_queue(infra.amqp_url, tier_queue)
            loaded = want_backlog
            run = await dispatcher_throughput(
                infra,
                rcv,
                publisher_ids,
                range(next_id, next_id + fresh),
                f"p5-fresh-{n}-{'backlog' if loaded else 'none'}",
                first_arrival_timeout=cfg["first_arrival_timeout"],
                workers=cfg["workers"],
            )
            next_id += fresh
            runs.append({"backlog": loaded, **run})
    none_rates = [run["rate_per_s"] for run in runs if not run["backlog"]]
    loaded_rates = [run["rate_per_s"] for run in runs if run["backlog"]]
    ratio = statistics.fmean(loaded_rates) / statistics.fmean(none_rates)
    result.figures["retry_tiers"] = {
        "fresh_events": fresh,
        "order": cfg["order"],
        "waiting_in_tier": backlog,
        "runs": runs,
        "ratio_loaded_over_none": round(ratio, 3),
        "method": f"{'-'.join(cfg['order'])} (A: nothing waiting, B: the backlog in the "
        "longest tier); ratio of the mean rates",
    }
    result.target(
        f"fresh postbacks/s with {waiting:,} in retry tiers ÷ with none",
        round(ratio, 3),
        ">=",
        0.90,
    )


INSERT_DEAD_LETTERS = """
INSERT INTO dead_letters (
    event_key, event_id, sequence, conversion_id, click_id, publisher_id, offer_id, payout,
    url_masked, attempts, last_status, last_error, reason, first_attempt_at, last_attempt_at,
    dead_at, state, payload, history)
SELECT
    'bench:' || g, gen_random_uuid(), 0, g, 7000000000000 + g, 1 + g % 10, 1 + g % 5, 0.5,
    'http://127.0.0.1:9/postback?click_id=' || (7000000000000 + g) || '&token=***',
    8, 503, 'HTTPStatusError: 503 Service Unavailable', 'exhausted',
    now() - interval '3 days' - g * interval '1 second',
    now() - g * interval '1 second',
    now() - g * interval '1 second', 'dead',
    convert_to('{"schema_version":1,"conversion_id":' || g || '}', 'UTF8'),
    jsonb_build_array(jsonb_build_object('attempt', 1, 'status', 503),
                      jsonb_build_object('attempt', 8, 'status', 503))
FROM generate_series($1::bigint, $2::bigint) AS g
"""


# The list endpoint's query (newest open dead letters first), to separate the
# database's share from the HTTP/ORM share of the page time.
EXPLAIN_PAGE = """
EXPLAIN (ANALYZE, FORMAT JSON)
SELECT * FROM dead_letters WHERE state = 'dead' ORDER BY dead_at DESC, id DESC LIMIT 51
"""


async def _page_times(base: str, requests: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    url = base + "/api/v1/dead-letters?limit=50"
    timings: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        items = 0
        for n in range(requests + 5):
            start = time.perf_counter()
            async with session.get(url, headers=headers) as resp:
                body = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"dead-letter page -> {resp.status}: {body}")
            if n >= 5:  # the first few warm the pool and caches
                timings.append((time.perf_counter() - start) * 1000)
            items = len(body.get("items") or []) if isinstance(body, dict) else 0
    timings.sort()
    return {
        "requests": len(timings),
        "items_on_page": items,
        "median_ms": round(statistics.median(timings), 3),
        "p95_ms": round(timings[int(len(timings) * 0.95) - 1], 3),
    }


async def _dead_letter_part(infra: Infra, cfg: dict[str, Any], result: Result) -> None:
    small, large = cfg["dead"]
    workers = {} if cfg["workers"] is None else {"DISPATCHER_WORKERS": cfg["workers"]}
    async with dispatcher(infra, "p5-dead-letters", **workers) as (_proc, base):
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                base + "/api/v1/dead-letters?limit=50",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            ) as resp,
        ):
            if resp.status == 404:
                raise Skipped("GET /api/v1/dead-letters is not served by the dispatcher yet")
        conn = await asyncpg.connect(infra.dsn)
        figures: dict[str, Any] = {}
        try:
            inserted = 0
            for label, size in (("small", small), ("large", large)):
                start = time.perf_counter()
                await conn.execute(INSERT_DEAD_LETTERS, inserted + 1, size)
                insert_s = time.perf_counter() - start
                # Steady state, not "right after a bulk load": statistics, visibility
                # map and hint bits set, dirty pages written, so autovacuum and the
                # checkpointer do not run during the timing.
                await conn.execute("VACUUM (ANALYZE) dead_letters")
                settled = await wait_for_written_back(infra.dsn)
                plan = orjson.loads(await conn.fetchval(EXPLAIN_PAGE))
                inserted = size
                say(f"{size:,} dead letters stored (insert {insert_s:.1f}s)")
                figures[label] = {
                    "stored": size,
                    "insert_s": round(insert_s, 2),
                    "settled_before": settled,
                    "sql_execution_ms": round(plan[0]["Execution Time"], 3),
                    "sql_plan": plan[0]["Plan"]["Plans"][0]["Node Type"]
                    + " using "
                    + str(plan[0]["Plan"]["Plans"][0].get("Index Name")),
                    **await _page_times(base, cfg["page_requests"]),
                }
        finally:
            await conn.close()
    ratio = figures["large"]["median_ms"] / figures["small"]["median_ms"]
    figures["ratio_large_over_small"] = round(ratio, 3)
    result.figures["dead_letter_page"] = figures
    result.target(
        f"dead-letter page median, {large:,} vs {small:,} stored (ratio)",
        round(ratio, 3),
        "<=",
        1.25,
    )


async def run(mode: str, result: Result) -> None:
    cfg = SIZES[mode]
    if cfg["workers"] is not None:
        result.notes.append(
            f"P5 smoke run: DISPATCHER_WORKERS={cfg['workers']} (full: the default)"
        )
    parts: tuple[tuple[str, Callable[[Infra, dict[str, Any], Result], Awaitable[None]]], ...] = (
        ("rss", _rss_part),
        ("retry tiers", _retry_tier_part),
        ("dead-letter page", _dead_letter_part),
    )
    # Experiment switch: BENCH_P5_PARTS="retry tiers" runs only the named parts.
    only = {n.strip() for n in os.environ.get("BENCH_P5_PARTS", "").split(",") if n.strip()}
    if only:
        parts = tuple((name, part) for name, part in parts if name in only)
        result.notes.append(f"EXPERIMENT: only P5 parts {sorted(only)}")
    async with infrastructure("p5") as infra:
        for name, part in parts:
            try:
                await part(infra, cfg, result)
            except Skipped as exc:
                result.skip_part(name, exc.reason)
            except Exception as exc:
                result.skip_part(name, f"error: {type(exc).__name__}: {exc}")
                result.notes.append(f"{name} failed: {exc!r}")
            finally:
                # Each part starts from an empty work queue.
                try:
                    await purge_queue(infra.amqp_url, WORK_QUEUE)
                except Exception as exc:  # queue never declared: nothing to purge
                    result.notes.append(f"purge after {name}: {exc!r}")
    if len(result.skipped_parts) == len(parts):
        raise Skipped("; ".join(result.skipped_parts))
