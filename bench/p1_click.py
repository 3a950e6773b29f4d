"""P1 - the click path: GET /get/{code} beside a raw-ASGI 302 on the same server.

1. The raw ASGI app (bench/raw_asgi.py) under uvicorn with the gateway's server
   settings (uvloop, httptools, as many workers, no access log), and the real gateway
   (``click-gateway serve``) on a fresh database/vhost with a realistic SmartLink
   (5 targeted, weighted offers) created via the admin API - both up together.
2. A warm-up each (the gateway's on a second SmartLink), then rounds of the same
   wrk run, alternating raw / gateway, so slow drift of a shared machine hits
   both alike; each side's rate is its total requests / total time.
3. Durability: after each gateway round, count the measured SmartLink's rows in
   ``clicks`` until they reach wrk's completed requests so far; target: within 1 s.
4. p99 at half the peak: our open-loop generator at 0.5 x the gateway's wrk rate
   (latency from each request's due time, so queueing is counted).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson

from bench.common import (
    BIN,
    CpuAccount,
    Proc,
    Result,
    Skipped,
    free_port,
    http_status,
    infrastructure,
    running,
    say,
    spawn,
    tree_cpu_seconds,
    wait_for_quiet_machine,
    wait_for_written_back,
    wait_until,
)
from bench.seed import seed_click_scenario
from bench.services import gateway
from bench.wrk import run_wrk
from postback_core.settings import resolve_workers

SETTINGS = {
    "quick": {"rounds": 1, "duration": 1, "warmup": 1, "half_duration": 1},
    "full": {"rounds": 5, "duration": 5, "warmup": 3, "half_duration": 10},
}
WRK_THREADS = 1
WRK_CONNECTIONS = 32


def server_workers() -> int:
    """Worker processes for both servers: the gateway's default (one per CPU, at
    most 4) unless ``BENCH_P1_WORKERS`` asks for an experiment with another count."""
    return resolve_workers(int(os.environ.get("BENCH_P1_WORKERS", "0")))


@asynccontextmanager
async def _raw_asgi_server(workers: int) -> AsyncIterator[tuple[Proc, str]]:
    """The ceiling, served like the gateway: uvicorn, uvloop, httptools, as many workers."""
    port = free_port()
    proc = spawn(
        "p1-raw-asgi",
        [
            str(BIN / "python"),
            "-m",
            "uvicorn",
            "bench.raw_asgi:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--no-server-header",
            "--no-proxy-headers",
            "--log-level",
            "warning",
        ],
    )
    async with running(proc):
        base = f"http://127.0.0.1:{port}"

        async def up() -> bool:
            return await http_status(base + "/get/x") == 302

        await wait_until(up, 30, proc=proc, what="raw ASGI app")
        yield proc, base


def _combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one server together: total requests / total time; worst p99."""
    requests = sum(r["requests"] for r in runs)
    seconds = sum(r["duration_s"] for r in runs)
    cpu_us = sum(r["server_cpu_us_per_request"] * r["requests"] for r in runs) / requests
    return {
        "rps": round(requests / seconds, 1),
        "server_cpu_us_per_request": round(cpu_us, 2),
        "requests": requests,
        "duration_s": round(seconds, 3),
        "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 3),
        "p99_ms": max(r["p99_ms"] for r in runs),
        "p999_ms": max(r.get("p999_ms", 0.0) for r in runs),
        "socket_errors": sum(r["socket_errors"] for r in runs),
        "non_2xx_3xx": sum(r["non_2xx_3xx"] for r in runs),
        "rounds": runs,
    }


async def _count_until(
    conn: asyncpg.Connection, smartlink_id: int, expected: int, stopped: float
) -> dict[str, Any]:
    """Count the SmartLink's clicks every 20 ms until they reach ``expected`` (max 5 s)."""
    rows = 0
    reached_at: float | None = None
    rows_at_1s = 0
    while time.monotonic() - stopped < 5:
        rows = await conn.fetchval(
            "SELECT count(*) FROM clicks WHERE smartlink_id = $1", smartlink_id
        )
        elapsed = time.monotonic() - stopped
        if elapsed <= 1.0:
            rows_at_1s = rows
        if rows >= expected:
            reached_at = elapsed
            break
        await asyncio.sleep(0.02)
    return {
        "wrk_completed_requests": expected,
        "rows_in_clicks": rows,
        "rows_within_1s": rows_at_1s,
        "all_rows_after_s": round(reached_at, 3) if reached_at is not None else None,
    }


async def _open_loop(port: int, path: str, rate: float, duration: float) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.openloop",
        "--port",
        str(port),
        "--path",
        path,
        "--rate",
        f"{rate:.0f}",
        "--duration",
        str(duration),
        "--connections",
        "64",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), duration + 60)
    for line in out.decode().splitlines():
        if line.startswith("OPENLOOP "):
            result: dict[str, Any] = orjson.loads(line[len("OPENLOOP ") :])
            return result
    raise RuntimeError(f"open-loop generator failed: {err.decode()[-2000:]}")


async def run(mode: str, result: Result) -> None:
    if shutil.which("wrk") is None:
        raise Skipped("wrk is not installed (Debian package wrk)")
    cfg = SETTINGS[mode]
    rounds, duration = cfg["rounds"], cfg["duration"]
    workers = server_workers()
    result.figures["workers"] = workers
    if os.environ.get("BENCH_P1_WORKERS"):
        result.notes.append(f"experiment: BENCH_P1_WORKERS={workers} (both servers)")
    result.notes.append(
        f"wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{duration}s --latency, "
        "Lua visitor mix (20 UAs, 19 client IPs via X-Forwarded-For); "
        f"{cfg['warmup']}s warm-up per server, then {rounds} round(s) alternating raw ASGI "
        f"and gateway (both servers up the whole time, one loaded at a time; {workers} "
        "worker process(es) each, CPU summed over each server's process tree)"
    )
    async with (
        _raw_asgi_server(workers) as (raw_proc, raw_base),
        infrastructure("p1") as infra,
        gateway(infra, "p1-gateway", GATEWAY_WORKERS=workers) as (gw_proc, base),
    ):
        seeded = await seed_click_scenario(base, infra.dsn, smartlinks=2)
        result.figures["seeded_via"] = seeded.ways
        warm_code, code = seeded.codes
        path = f"/get/{code}"

        async def redirects() -> bool:
            return await http_status(f"{base}/get/{warm_code}?cid=probe") == 302

        try:
            await wait_until(redirects, 15, interval=0.2, what="SmartLink redirect")
        except TimeoutError:
            status = await http_status(f"{base}/get/{warm_code}?cid=probe")
            raise Skipped(
                f"GET /get/{{code}} answers {status}, not 302: click handler not ready"
            ) from None

        await run_wrk(raw_base, "/get/raw", WRK_THREADS, WRK_CONNECTIONS, cfg["warmup"])
        await run_wrk(base, f"/get/{warm_code}", WRK_THREADS, WRK_CONNECTIONS, cfg["warmup"])
        raw_runs: list[dict[str, Any]] = []
        gw_runs: list[dict[str, Any]] = []
        checks: list[dict[str, Any]] = []
        conn = await asyncpg.connect(infra.dsn)
        try:
            smartlink_id = await conn.fetchval("SELECT id FROM smartlinks WHERE code = $1", code)
            for n in range(rounds):
                cpu = tree_cpu_seconds(raw_proc.pid)
                raw = await run_wrk(raw_base, "/get/raw", WRK_THREADS, WRK_CONNECTIONS, duration)
                raw["server_cpu_us_per_request"] = round(
                    (tree_cpu_seconds(raw_proc.pid) - cpu) / raw["requests"] * 1e6, 2
                )
                raw_runs.append(raw)
                cpu = tree_cpu_seconds(gw_proc.pid)
                gw = await run_wrk(base, path, WRK_THREADS, WRK_CONNECTIONS, duration)
                stopped = time.monotonic()
                gw["server_cpu_us_per_request"] = round(
                    (tree_cpu_seconds(gw_proc.pid) - cpu) / gw["requests"] * 1e6, 2
                )
                gw_runs.append(gw)
                expected = sum(r["requests"] for r in gw_runs)
                checks.append(await _count_until(conn, smartlink_id, expected, stopped))
                say(
                    f"round {n + 1}: raw ASGI {raw['rps']:,.0f} req/s "
                    f"({raw['server_cpu_us_per_request']} µs CPU/req, p99 {raw['p99_ms']} ms), "
                    f"gateway {gw['rps']:,.0f} req/s ({gw['server_cpu_us_per_request']} µs "
                    f"CPU/req, p99 {gw['p99_ms']} ms), clicks stored after "
                    f"{checks[-1]['all_rows_after_s']} s"
                )
        finally:
            await conn.close()
        raw_all, gw_all = _combine(raw_runs), _combine(gw_runs)
        result.figures["raw_asgi"] = raw_all
        result.figures["gateway"] = gw_all
        lags = [c["all_rows_after_s"] for c in checks]
        result.figures["durability"] = {
            "checks": checks,
            "worst_all_rows_after_s": None if None in lags else max(lags),
            "note": "after each gateway round the SmartLink's rows are counted until they reach "
            "wrk's completed requests so far; rows may exceed wrk's count by the requests "
            "in flight when wrk stopped (answered by the server, not counted by wrk)",
        }

        half_rate = max(50.0, gw_all["rps"] / 2)
        port = int(base.rsplit(":", 1)[1])
        # The latency phase measures half the load, not the write-back of the
        # saturated rounds' clicks.
        settled = await wait_for_written_back(infra.dsn)
        # ... and not the autovacuum or kernel work the rounds left behind either.
        settled["quiet_after_s"] = await wait_for_quiet_machine()
        # Where the machine's CPU went meanwhile: explains a tail that is not ours.
        account = CpuAccount()
        account.start()
        half = await _open_loop(port, path, half_rate, cfg["half_duration"])
        half["cpu"] = account.stop(max(1, half["completed"]), half["elapsed_s"])
        half["target_rate_per_s"] = round(half_rate, 1)
        half["settled_before"] = settled
        say(f"open loop at {half_rate:,.0f}/s: p50 {half['p50_ms']} ms, p99 {half['p99_ms']} ms")
        result.figures["half_peak_open_loop"] = half

    ratio = gw_all["rps"] / raw_all["rps"] if raw_all["rps"] else 0.0
    per_round = [g["rps"] / r["rps"] for g, r in zip(gw_runs, raw_runs, strict=True)]
    result.figures["ratio_vs_raw_asgi"] = round(ratio, 3)
    result.figures["ratio_per_round"] = [round(x, 3) for x in per_round]
    # The same comparison by CPU per request: steadier on a shared machine.
    result.figures["cpu_ratio_raw_over_gateway"] = round(
        raw_all["server_cpu_us_per_request"] / gw_all["server_cpu_us_per_request"], 3
    )
    result.target("click req/s ÷ raw-ASGI req/s", round(ratio, 3), ">=", 0.5)
    worst = result.figures["durability"]["worst_all_rows_after_s"]
    result.target(
        "every click in PostgreSQL after load stops",
        worst if worst is not None else float("nan"),
        "<=",
        1.0,
        "s",
    )
    result.target("p99 at half the peak rate (open loop)", half["p99_ms"], "<=", 10.0, "ms")
