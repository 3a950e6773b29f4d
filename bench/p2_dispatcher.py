"""P2 - the dispatcher beside a raw aiohttp GET loop to the same receiver.

The work queue is pre-filled (events published with confirms) for publishers
whose postback settings point at the loopback receiver; then the dispatcher is
started and we time the receiver's first to last arrival. The ceiling is a bare
aiohttp GET loop (own process, uvloop) with the same number of requests in
flight against the same receiver.

Concurrency: the dispatcher's prefetch stays at its default (256 per consumer
process); its per-host cap is set to CONCURRENCY so that, against one receiver
host, it may have as many requests in flight as the raw loop has (the dispatcher
shares the cap out between its DISPATCHER_WORKERS consumer processes, default one
per core). CPU per postback is summed over the dispatcher's whole process tree;
``machine_cpu_busy_share`` says how busy all cores were meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from typing import Any

import orjson

from bench.common import (
    CpuAccount,
    Result,
    Skipped,
    broker_cpu_seconds,
    infrastructure,
    process_tree,
    say,
    tree_cpu_seconds,
    wait_for_quiet_machine,
)
from bench.events import publish_events
from bench.http_clients import run_get_loop_process
from bench.seed import seed_postback_publishers
from bench.services import ReceiverClient, dispatcher, receiver

SIZES = {"quick": 2_000, "full": 20_000}
CONCURRENCY = 64
PUBLISHERS = 10
FIRST_ARRIVAL_TIMEOUT = {"quick": 8.0, "full": 30.0}
ROUNDS = {"quick": 1, "full": 3}
# Per-run figures averaged over the rounds.
_MEANS = (
    "rate_per_s",
    "dispatcher_cpu_us_per_postback",
    "dispatcher_cpu_share_of_one_core",
    "broker_cpu_us_per_postback",
    "machine_cpu_busy_share",
)


def _mean(runs: list[dict[str, Any]], key: str) -> float:
    return round(statistics.fmean(run[key] for run in runs), 1)


def dispatcher_env(concurrency: int = CONCURRENCY, workers: int | None = None) -> dict[str, Any]:
    # BENCH_P2_PER_HOST: experiment switch (e.g. 256 = no waiters on the per-host limiter).
    # BENCH_P2_WORKERS: experiment switch for DISPATCHER_WORKERS (default: the setting's).
    env: dict[str, Any] = {
        "DISPATCHER_CONCURRENCY": 256,
        "POSTBACK_PER_HOST_CONCURRENCY": os.environ.get("BENCH_P2_PER_HOST", concurrency),
    }
    if workers is not None:
        env["DISPATCHER_WORKERS"] = workers
    if os.environ.get("BENCH_P2_WORKERS"):
        env["DISPATCHER_WORKERS"] = os.environ["BENCH_P2_WORKERS"]
    return env


async def wait_for_deliveries(
    rcv: ReceiverClient,
    expected: int,
    proc_alive: Any,
    first_arrival_timeout: float = 30.0,
    stall_timeout: float = 15.0,
) -> dict[str, Any]:
    """Poll the receiver until ``expected`` requests arrived; fail on no progress."""
    started = time.monotonic()
    last_count, last_progress = 0, time.monotonic()
    while True:
        stats = await rcv.stats()
        count = stats["count"]
        now = time.monotonic()
        if count >= expected:
            break
        if count != last_count:
            last_count, last_progress = count, now
        if not proc_alive():
            raise RuntimeError(f"dispatcher exited after {count}/{expected} deliveries")
        if count == 0 and now - started > first_arrival_timeout:
            raise Skipped(
                f"dispatcher delivered nothing in {first_arrival_timeout:.0f}s "
                "(consumer not implemented yet?)"
            )
        if count and now - last_progress > stall_timeout:
            raise RuntimeError(f"dispatcher stalled at {count}/{expected} deliveries")
        await asyncio.sleep(0.1)
    span = (stats["last"] - stats["first"]) or 1e-9
    say(f"receiver has all {count:,} postbacks: {(count - 1) / span:,.0f}/s")
    return {
        "delivered": count,
        "first_to_last_s": round(span, 3),
        "rate_per_s": round((count - 1) / span, 1),
        "wall_s": round(time.monotonic() - started, 3),
    }


async def dispatcher_throughput(
    infra: Any,
    rcv: ReceiverClient,
    publisher_ids: list[int],
    conversion_ids: range,
    name: str,
    concurrency: int = CONCURRENCY,
    first_arrival_timeout: float = 30.0,
    workers: int | None = None,
) -> dict[str, Any]:
    """Pre-fill, then start the dispatcher and time the deliveries."""
    published = await publish_events(infra.amqp_url, conversion_ids, publisher_ids)
    # Every run starts from a quiet machine: the broker has written what was
    # published, and what the previous run left (autovacuum, write-back) is done.
    settle_s = await wait_for_quiet_machine()
    await rcv.reset()
    async with dispatcher(infra, name, **dispatcher_env(concurrency, workers)) as (proc, _base):
        # The whole process tree: with DISPATCHER_WORKERS > 1 the consumers are children.
        processes = len(process_tree(proc.pid))
        cpu = tree_cpu_seconds(proc.pid)
        broker = broker_cpu_seconds()
        account = CpuAccount()
        account.start()
        figures = await wait_for_deliveries(
            rcv, len(conversion_ids), proc.alive, first_arrival_timeout
        )
        used = tree_cpu_seconds(proc.pid) - cpu
        broker_used = broker_cpu_seconds() - broker
        # Every process's share: says what else took the machine during a slow run.
        figures["cpu"] = account.stop(len(conversion_ids), figures["wall_s"])
        # Includes its start-up work after /healthz answered; small beside the run.
        figures["dispatcher_cpu_us_per_postback"] = round(used / len(conversion_ids) * 1e6, 1)
        figures["dispatcher_cpu_share_of_one_core"] = round(used / figures["wall_s"], 2)
        figures["dispatcher_processes"] = processes
        figures["broker_cpu_us_per_postback"] = round(broker_used / len(conversion_ids) * 1e6, 1)
        figures["settle_s"] = settle_s
        # How busy the whole machine was meanwhile (share of all cores; 1.0 = saturated).
        figures["machine_cpu_busy_share"] = figures["cpu"]["machine_busy_share"]
    figures["prefill"] = published
    return figures


async def _amqp_ceiling(url: str, count: int, ack: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.amqp_ceiling",
        "--url",
        url,
        "--count",
        str(count),
        "--ack",
        ack,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 320)
    for line in out.decode().splitlines():
        if line.startswith("AMQPCEILING "):
            figures: dict[str, Any] = orjson.loads(line[len("AMQPCEILING ") :])
            return figures
    raise RuntimeError(f"consume ceiling failed: {err.decode()[-2000:]}")


async def run(mode: str, result: Result) -> None:
    total = SIZES[mode]
    result.notes.append(
        f"{total} events pre-filled for {PUBLISHERS} publishers (token-signed GET template with "
        f"6 macros); dispatcher prefetch 256 per consumer process, per-host cap {CONCURRENCY} "
        "in all, DISPATCHER_WORKERS as configured (default: one per core); CPU summed over "
        f"the dispatcher's process tree; raw loop "
        f"{CONCURRENCY} in flight; rate = (n-1) / (last arrival - first arrival); broker "
        "ceiling = aio-pika consume + ack of the same events with no other work (prefetch 256)"
    )
    async with infrastructure("p2") as infra, receiver("p2-receiver") as rcv:
        publisher_ids = await seed_postback_publishers(infra.dsn, rcv.base, PUBLISHERS)
        # Rounds alternate dispatcher and raw loop, so that a slow spell of the
        # shared machine (they last tens of seconds here) falls on both alike.
        dispatcher_runs: list[dict[str, Any]] = []
        raw_runs: list[dict[str, Any]] = []
        figures: dict[str, Any] | None = None
        for n in range(ROUNDS[mode]):
            try:
                dispatcher_runs.append(
                    await dispatcher_throughput(
                        infra,
                        rcv,
                        publisher_ids,
                        range(n * total + 1, (n + 1) * total + 1),
                        f"p2-dispatcher-{n + 1}",
                        first_arrival_timeout=FIRST_ARRIVAL_TIMEOUT[mode],
                    )
                )
            except Skipped as exc:
                result.skip_part("dispatcher", exc.reason)
                break
            await rcv.reset()
            raw_runs.append(
                await run_get_loop_process("aiohttp", rcv.base + "/postback", CONCURRENCY, total)
            )
            say(f"raw aiohttp loop: {raw_runs[-1]['rps']:,.0f} req/s")
        if dispatcher_runs:
            figures = {
                **{key: _mean(dispatcher_runs, key) for key in _MEANS},
                "prefill": dispatcher_runs[0]["prefill"],
                "rounds": dispatcher_runs,
            }
            result.figures["dispatcher"] = figures
        if raw_runs:
            raw = {"rps": _mean(raw_runs, "rps"), "rounds": raw_runs}
            result.figures["raw_aiohttp_loop"] = raw
        events_used = ROUNDS[mode] * total
        broker: dict[str, Any] = {}
        for ack in ("single", "batched") if mode == "full" else ():
            n = min(total, 10_000)
            await publish_events(
                infra.amqp_url, range(events_used + 1, events_used + n + 1), publisher_ids
            )
            events_used += n
            broker[ack] = await _amqp_ceiling(infra.amqp_url, n, ack)
            say(f"consume + ack ({ack}) with no other work: {broker[ack]['rate_per_s']:,.0f}/s")
        result.figures["broker_consume_ack_ceiling"] = broker
    if figures is None:
        raise Skipped(result.skipped_parts[-1])
    ratio = figures["rate_per_s"] / raw["rps"]
    result.figures["ratio_vs_raw_loop"] = round(ratio, 3)
    result.figures["ratio_per_round"] = [
        round(d["rate_per_s"] / r["rps"], 3)
        for d, r in zip(dispatcher_runs, raw_runs, strict=False)
    ]
    result.target("dispatcher postbacks/s ÷ raw aiohttp loop", round(ratio, 3), ">=", 0.6)
    if broker:
        best_broker = max(b["rate_per_s"] for b in broker.values())
        ceiling = round(min(raw["rps"], best_broker), 1)
        result.figures["ceiling_min_http_broker"] = ceiling
        result.figures["ratio_vs_min_ceiling"] = round(figures["rate_per_s"] / ceiling, 3)
