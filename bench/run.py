"""Run the benchmarks: ``python -m bench.run --quick|--full [--only P1,P2] [--json PATH]``.

Prints a table, writes every figure to JSON (default bench/results/latest.json)
and a Markdown summary beside it. Timing targets are reported, never asserted:
the exit status is non-zero only when a benchmark crashed (CI smoke test).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from bench.common import ROOT, Result, Skipped, loadavg, machine_info, reset_clock
from bench.report import render

BENCHMARKS: dict[str, tuple[str, str]] = {
    "P1": ("bench.p1_click", "Click path vs raw ASGI"),
    "P2": ("bench.p2_dispatcher", "Dispatcher vs raw aiohttp loop"),
    "P3": ("bench.p3_end_to_end", "End to end: conversion API to postback"),
    "P4": ("bench.p4_conversions", "Conversion API with the outbox"),
    "P5": ("bench.p5_growth", "Growth: queue depth, retry tiers, dead letters"),
    "HC": ("bench.http_clients", "Sender HTTP client: aiohttp vs httpx"),
}
# The smoke run leaves out HC: it only documents the sender choice
# (docs/http-client-choice.md) and asserts nothing about our code.
FULL_ONLY = {"HC"}
DEFAULT_JSON = ROOT / "bench" / "results" / "latest.json"
console = Console()


async def run_one(key: str, mode: str) -> Result:
    module_name, title = BENCHMARKS[key]
    result = Result(key=key, title=title)
    start = time.monotonic()
    reset_clock()
    console.print(f"[bold]{key}[/bold] {title} ({mode}) …  load {loadavg()}")
    try:
        module = importlib.import_module(module_name)
        await module.run(mode, result)
    except Skipped as exc:
        result.status = "skipped"
        result.reason = exc.reason
    except Exception as exc:
        result.status = "error"
        result.reason = f"{type(exc).__name__}: {exc}"
        console.print(f"[red]{key} failed[/red]\n{traceback.format_exc()}")
    result.elapsed_s = time.monotonic() - start
    status = {"ok": "[green]ok[/green]", "skipped": "[yellow]skipped[/yellow]"}.get(
        result.status, "[red]error[/red]"
    )
    console.print(f"  {key} {status} in {result.elapsed_s:.1f}s {result.reason or ''}")
    return result


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "n/a"
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a"}[passed]


def print_table(results: list[Result]) -> None:
    table = Table(title="Targets", show_lines=False)
    for column in ("Bench", "Target", "Measured", "Goal", "Result"):
        table.add_column(column)
    for result in results:
        if not result.targets:
            table.add_row(result.key, result.title, "-", "-", f"{result.status}: {result.reason}")
        for target in result.targets:
            verdict = _verdict(target["passed"])
            colour = {"PASS": "green", "FAIL": "red"}.get(verdict, "yellow")
            table.add_row(
                result.key,
                target["name"],
                f"{_fmt(target['measured'])} {target['unit']}".strip(),
                f"{target['op']} {_fmt(target['threshold'])} {target['unit']}".strip(),
                f"[{colour}]{verdict}[/{colour}]",
            )
        for part in result.skipped_parts:
            table.add_row(result.key, part, "-", "-", "[yellow]skipped[/yellow]")
    console.print(table)


async def main_async(mode: str, only: list[str], json_path: Path) -> int:
    started = datetime.now(UTC)
    meta: dict[str, Any] = {
        "mode": mode,
        "started_at": started.isoformat(timespec="seconds"),
        "machine": await asyncio.to_thread(machine_info),
    }
    m = meta["machine"]
    console.print(
        f"{m['nproc']} cores ({m['cpu_model']}), Python {m['python']}, load {m['loadavg_at_start']}"
    )
    t0 = time.monotonic()
    results = [await run_one(key, mode) for key in only]
    meta["total_s"] = round(time.monotonic() - t0, 1)
    meta["loadavg_at_end"] = loadavg()
    print_table(results)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    document = {"meta": meta, "benchmarks": {r.key: r.as_dict() for r in results}}
    json_path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    md_path = json_path.with_suffix(".md")
    md_path.write_text(render(document))
    console.print(f"figures: {json_path}  summary: {md_path}  total {meta['total_s']} s")
    return 1 if any(r.status == "error" for r in results) else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--quick", action="store_true", help="smoke run, under a minute")
    size.add_argument("--full", action="store_true", help="the real measurement, ≤ 10 min")
    parser.add_argument("--only", default="", help="comma-separated subset, e.g. P1,P2")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where figures go")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="attach py-spy to the services (needs py-spy; figures are then not comparable)",
    )
    args = parser.parse_args()
    if args.profile:
        os.environ["BENCH_PROFILE"] = "1"
    only = [k.strip().upper() for k in args.only.split(",") if k.strip()] or [
        key for key in BENCHMARKS if not (args.quick and key in FULL_ONLY)
    ]
    unknown = [k for k in only if k not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}")

    import uvloop

    mode = "quick" if args.quick else "full"
    if mode == "quick":
        # A smoke run: one dispatcher process starts in ~1.5 s instead of ~3.3 s
        # (every quick benchmark starts one or several). --full uses the default.
        os.environ.setdefault("DISPATCHER_WORKERS", "1")
    raise SystemExit(uvloop.run(main_async(mode, only, args.json)))


if __name__ == "__main__":
    main()
