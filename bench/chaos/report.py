"""What the chaos run proves: every accepted conversion ended delivered or dead-lettered.

The figures come from three independent witnesses: what the load was told (201/200
answers, 302 redirects), what the database holds (conversions, deliveries, dead
letters, clicks, outbox) and what the receiver recorded by ``X-Postback-Id``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from bench.common import ROOT
from postback_core.enums import DeliveryStatus

RESULTS_DIR = ROOT / "bench" / "results"

CONVERSIONS_STATE = """
SELECT c.click_id, c.event_id::text AS event_id, d.status, d.attempts,
       EXISTS (SELECT 1 FROM dead_letters dl WHERE dl.event_id = c.event_id) AS dead_letter
FROM conversions c LEFT JOIN deliveries d ON d.conversion_id = c.id
"""
UNPUBLISHED_OUTBOX = "SELECT count(*) FROM outbox WHERE published_at IS NULL"
# Events the relay published more than once (a publish whose confirm it did not get
# in time, or a batch cut by a kill): the broker may hold two copies of them.
REPUBLISHED_OUTBOX = """
SELECT count(*) AS rows, max(publish_attempts) AS most,
       (array_agg(DISTINCT left(last_error, 200)) FILTER (WHERE last_error IS NOT NULL))[1:3]
           AS errors
FROM outbox WHERE publish_attempts > 1
"""
CLICKS_FOUND = "SELECT count(DISTINCT click_id) FROM clicks WHERE click_id = ANY($1::bigint[])"


async def database_state(dsn: str) -> tuple[list[asyncpg.Record], int]:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        rows = await conn.fetch(CONVERSIONS_STATE)
        unpublished = int(await conn.fetchval(UNPUBLISHED_OUTBOX))
    finally:
        await conn.close()
    return rows, unpublished


def settled(rows: list[asyncpg.Record], accepted: set[int], unpublished: int) -> bool:
    """Drained: nothing left in the outbox, every conversion final, every dead one archived."""
    if unpublished:
        return False
    if not accepted <= {row["click_id"] for row in rows}:
        return False
    for row in rows:
        if row["status"] == DeliveryStatus.DELIVERED:
            continue
        if row["status"] == DeliveryStatus.DEAD and row["dead_letter"]:
            continue
        return False
    return True


async def outbox_republished(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        row = await conn.fetchrow(REPUBLISHED_OUTBOX)
    finally:
        await conn.close()
    assert row is not None
    return {"rows": row["rows"], "most_attempts": row["most"], "errors": row["errors"] or []}


async def clicks_found(dsn: str, click_ids: list[int]) -> int:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return int(await conn.fetchval(CLICKS_FOUND, click_ids))
    finally:
        await conn.close()


def promise_figures(
    rows: list[asyncpg.Record],
    unpublished: int,
    accepted: set[int],
    receiver_ids: dict[str, list[float]],
    max_attempts: int,
) -> dict[str, Any]:
    """Delivered / dead-lettered / lost / over the limit / duplicates, with the lost ones named."""
    by_click = {row["click_id"]: row for row in rows}
    lost: dict[str, list[str]] = {
        "accepted_but_not_stored": [str(c) for c in sorted(accepted - by_click.keys())],
        "never_finished": [],
        "delivered_but_never_received": [],
        "dead_without_dead_letter": [],
    }
    delivered = dead = 0
    over_limit: list[str] = []
    for row in rows:
        event_id = row["event_id"]
        arrived, ok = receiver_ids.get(event_id, [0, 0])[:2]
        if row["status"] == DeliveryStatus.DELIVERED:
            if ok:
                delivered += 1
            else:
                lost["delivered_but_never_received"].append(event_id)
        elif row["status"] == DeliveryStatus.DEAD:
            if row["dead_letter"]:
                dead += 1
            else:
                lost["dead_without_dead_letter"].append(event_id)
        else:
            lost["never_finished"].append(f"{event_id} ({row['status'] or 'no delivery row'})")
        if max(row["attempts"] or 0, arrived) > max_attempts:
            over_limit.append(f"{event_id} (db {row['attempts']}, received {arrived})")
    duplicated = {i: int(v[1]) for i, v in receiver_ids.items() if v[1] > 1}
    return {
        "conversions_stored": len(rows),
        "delivered": delivered,
        "dead_lettered": dead,
        "lost": sum(len(v) for v in lost.values()),
        "lost_detail": {k: v[:50] for k, v in lost.items() if v},
        "attempts_over_limit": len(over_limit),
        "attempts_over_limit_detail": over_limit[:50],
        "max_attempts": max_attempts,
        "outbox_unpublished": unpublished,
        "duplicates_at_receiver": sum(ok - 1 for ok in duplicated.values()),
        "duplicated_ids": len(duplicated),
        "postbacks_received": int(sum(v[0] for v in receiver_ids.values())),
        "unknown_ids_at_receiver": len(receiver_ids.keys() - {r["event_id"] for r in rows}),
    }


def duplicates_by_fault(
    receiver_ids: dict[str, list[float]],
    faults: list[dict[str, Any]],
    t0_wall: float,
    after_s: float = 20.0,
) -> dict[str, int]:
    """Each repeated 2xx placed in time: the fault whose window (start to end + ``after_s``,
    when redeliveries and republished copies arrive) it falls in; ``none`` if no fault's."""
    counts: dict[str, int] = {}
    for value in receiver_ids.values():
        for t_ok in value[3:]:  # every 2xx after the first
            at = t_ok - t0_wall
            names = [f["name"] for f in faults if f["started_s"] <= at <= f["ended_s"] + after_s]
            key = "+".join(sorted(names)) or "none"
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def repeats_timeline(
    receiver_ids: dict[str, list[float]], t0_wall: float, bucket_s: float = 5.0
) -> dict[str, int]:
    """Repeated 2xx per ``bucket_s`` seconds since the load started (where they cluster)."""
    buckets: dict[int, int] = {}
    for value in receiver_ids.values():
        for t_ok in value[3:]:
            b = int((t_ok - t0_wall) // bucket_s)
            buckets[b] = buckets.get(b, 0) + 1
    return {f"{b * bucket_s:.0f}s": n for b, n in sorted(buckets.items())}


TABLE_ROWS = (
    ("conversions accepted (201)", "accepted", "counted"),
    ("delivered", "delivered", "every accepted one is one of these"),
    ("dead-lettered", "dead_lettered", "every accepted one is one of these"),
    ("lost", "lost", "0"),
    ("attempts over the limit", "attempts_over_limit", "0"),
    ("duplicates at the receiver", "duplicates_at_receiver", "at most the sends in flight"),
    ("clicks lost after kill -9", "clicks_lost", "at most one flush window"),
    ("time to drain after the last fault (s)", "drain_after_last_fault_s", "reported"),
)


def markdown(result: dict[str, Any]) -> str:
    f = result["figures"]
    bounds = {
        "duplicates_at_receiver": f"≤ {f['duplicate_bound']} in flight",
        "clicks_lost": f"≤ {f['clicks_at_risk']} in the last flush window",
        "accepted": (
            f"{f['accepted_after_retry']} after a retry, "
            f"{f['accepted_as_repeat']} answered 200 (stored by an earlier try)"
        ),
    }
    lines = [
        f"## Chaos run ({result['mode']}, seed {result['seed']})",
        "",
        f"{result['started_utc']}; {f['launched']} conversions launched at "
        f"{result['rate']}/s; AMQP failover {'on' if result['failover'] else 'off'}; "
        f"verdict: **{result['verdict']}**.",
        "",
        "| figure | measured | must be |",
        "|---|---|---|",
    ]
    for label, key, must in TABLE_ROWS:
        value = f.get(key)
        extra = bounds.get(key)
        shown = f"{value}" + (f" ({extra})" if extra else "")
        lines.append(f"| {label} | {shown} | {must} |")
    lines += [
        "",
        f"Never accepted (not lost: the client was told no): {f['never_accepted']}; "
        f"clicks without a redirect: {f['clicks_failed']}; conversions stored: "
        f"{f['conversions_stored']}; postbacks received: {f['postbacks_received']}; "
        f"outbox rows unpublished at the end: {f['outbox_unpublished']}; events the relay "
        f"published more than once: {f['outbox_republished']['rows']}.",
        "",
        "| fault | lane | start (s) | end (s) | injected | details |",
        "|---|---|---|---|---|---|",
    ]
    for fault in result["faults"]:
        detail = ", ".join(f"{k}={v}" for k, v in fault["details"].items())
        if fault["error"]:
            detail += f" error: {fault['error']}"
        lines.append(
            f"| {fault['name']} | {fault['lane']} | {fault['started_s']:.1f} | "
            f"{fault['ended_s']:.1f} | {'yes' if fault['injected'] else 'NO'} | {detail} |"
        )
    lines += [
        "",
        "| process | starts | kill -9 | unexpected exits |",
        "|---|---|---|---|",
    ]
    for proc in result["processes"]:
        lines.append(f"| {proc['name']} | {proc['starts']} | {proc['kills']} | {proc['crashes']} |")
    if f.get("duplicates_by_fault"):
        lines += [
            "",
            "Repeated 2xx at the receiver, by the fault window they fall in (start to end + 20 s): "
            + ", ".join(f"{k}: {v}" for k, v in f["duplicates_by_fault"].items())
            + "; by time since the load started: "
            + ", ".join(f"{k}: {v}" for k, v in f["duplicates_timeline"].items())
            + ".",
        ]
    if f["lost_detail"] or f["attempts_over_limit_detail"]:
        lines += ["", "Lost / over the limit (first 50 of each):", ""]
        for kind, items in f["lost_detail"].items():
            lines.append(f"- {kind}: {', '.join(items)}")
        if f["attempts_over_limit_detail"]:
            lines.append(f"- over the limit: {', '.join(f['attempts_over_limit_detail'])}")
    lines += ["", f"Run time {result['elapsed_s']:.0f} s; logs in {result['log_dir']}.", ""]
    return "\n".join(lines)


def write(result: dict[str, Any], results_dir: Path = RESULTS_DIR) -> tuple[Path, Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    md_path = results_dir / "chaos-latest.md"
    json_path = results_dir / "chaos-latest.json"
    md_path.write_text(markdown(result))
    json_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return md_path, json_path


def utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
