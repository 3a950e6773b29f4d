"""Markdown from a results JSON: machine, targets, and the figures behind each target.

``bench.run`` writes it beside the JSON (``latest.md``); docs/benchmarks.md quotes
the best run's:

    python -m bench.report bench/results/latest.json                 # print
    python -m bench.report RESULTS.json --into docs/benchmarks.md    # update the doc
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson


def fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if value != value:
            return "n/a"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a"}[passed]


def _get(d: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def machine_section(meta: dict[str, Any]) -> list[str]:
    m = meta["machine"]
    pk = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    return [
        f"- run: {meta['started_at']}, `--{meta['mode']}`, {meta.get('total_s')} s in all; "
        f"load average {m['loadavg_at_start']} at start, {meta.get('loadavg_at_end')} at end",
        f"- machine: {m['nproc']} cores, {m['cpu_model']}, Linux {m['kernel']}",
        f"- Python {m['python']}; {pk}",
        f"- {m['wrk']}; PostgreSQL {m['postgresql']}; RabbitMQ {m['rabbitmq']}",
    ]


def targets_table(benchmarks: dict[str, Any]) -> list[str]:
    lines = ["| Bench | Target | Measured | Goal | Result |", "|---|---|---|---|---|"]
    for key, b in benchmarks.items():
        if not b["targets"]:
            lines.append(f"| {key} | {b['title']} | - | - | {b['status']}: {b['reason']} |")
        for t in b["targets"]:
            unit = f" {t['unit']}" if t["unit"] else ""
            lines.append(
                f"| {key} | {t['name']} | {fmt(t['measured'])}{unit} | "
                f"{t['op']} {fmt(t['threshold'])}{unit} | {verdict(t['passed'])} |"
            )
        for part in b["skipped_parts"]:
            lines.append(f"| {key} | {part} | - | - | skipped |")
    return lines


def key_figures(benchmarks: dict[str, Any]) -> list[str]:
    """One line per measured quantity that a target is computed from."""
    rows: list[tuple[str, str, Any, str]] = []

    def add(bench: str, label: str, value: Any, unit: str = "") -> None:
        if value is not None:
            rows.append((bench, label, value, unit))

    p1 = _get(benchmarks, "P1", "figures") or {}
    add("P1", "raw ASGI 302, wrk", _get(p1, "raw_asgi", "rps"), "req/s")
    add("P1", "raw ASGI p50 / p99", _pair(p1, "raw_asgi"), "ms")
    add("P1", "gateway GET /get/{code}, wrk", _get(p1, "gateway", "rps"), "req/s")
    add("P1", "gateway p50 / p99", _pair(p1, "gateway"), "ms")
    add(
        "P1",
        "server CPU per request: raw ASGI / gateway",
        _ratio_text(
            p1,
            ("raw_asgi", "server_cpu_us_per_request"),
            ("gateway", "server_cpu_us_per_request"),
        ),
        "µs",
    )
    add("P1", "CPU-per-request ratio raw ÷ gateway", _get(p1, "cpu_ratio_raw_over_gateway"))
    add("P1", "per-round req/s ratios", _get(p1, "ratio_per_round"))
    add(
        "P1",
        "worst time until all clicks were in PostgreSQL",
        _get(p1, "durability", "worst_all_rows_after_s"),
        "s",
    )
    add(
        "P1",
        "open loop: target / achieved rate",
        _ratio_text(
            p1, ("half_peak_open_loop", "target_rate_per_s"), ("half_peak_open_loop", "rate_per_s")
        ),
        "/s",
    )
    add("P1", "open loop p50 / p99 / max", _triple(p1, "half_peak_open_loop"), "ms")
    add(
        "P1",
        "open loop: server time p99 / generator lateness p99",
        _pair(p1, "half_peak_open_loop", keys=("service_p99_ms", "send_lag_p99_ms")),
        "ms",
    )
    add(
        "P1",
        "open loop: generator CPU per request",
        _get(p1, "half_peak_open_loop", "generator_cpu_us_per_request"),
        "µs",
    )
    _add_cpu_rows(add, "P1", _get(p1, "half_peak_open_loop", "cpu"), unit="request (open loop)")
    p2 = _get(benchmarks, "P2", "figures") or {}
    add("P2", "dispatcher postbacks", _get(p2, "dispatcher", "rate_per_s"), "/s")
    add(
        "P2",
        "dispatcher CPU per postback / share of one core",
        _pair(
            p2,
            "dispatcher",
            keys=("dispatcher_cpu_us_per_postback", "dispatcher_cpu_share_of_one_core"),
        ),
    )
    add("P2", "raw aiohttp loop", _get(p2, "raw_aiohttp_loop", "rps"), "req/s")
    add("P2", "per-round ratios (dispatcher and raw loop alternate)", _get(p2, "ratio_per_round"))
    add("P2", "pre-fill publish (confirms)", _get(p2, "dispatcher", "prefill", "rate_per_s"), "/s")
    for ack in ("single", "batched"):
        add(
            "P2",
            f"broker ceiling: consume + {ack} ack, no other work",
            _get(p2, "broker_consume_ack_ceiling", ack, "rate_per_s"),
            "/s",
        )
    add("P2", "dispatcher ÷ min(HTTP, broker ceiling)", _get(p2, "ratio_vs_min_ceiling"))
    p3 = _get(benchmarks, "P3", "figures") or {}
    add("P3", "conversion API achieved rate", _get(p3, "conversion_api", "rate_per_s"), "/s")
    add("P3", "conversion API p50 / p99 (from due time)", _pair(p3, "conversion_api"), "ms")
    add("P3", "answer → postback p50 / p99 / max", _triple(p3, "end_to_end"), "ms")
    add(
        "P3",
        "postbacks matched / conversions",
        _ratio_text(p3, ("end_to_end", "postbacks_matched"), ("end_to_end", "conversions_201")),
    )
    add(
        "P3",
        "peak backlog: outbox rows / work-queue messages",
        _pair(p3, "backlog_timeline", keys=("peak_outbox", "peak_work_queue")),
    )
    _add_cpu_rows(add, "P3", _get(p3, "cpu_during_run"))
    p4 = _get(benchmarks, "P4", "figures") or {}
    add("P4", "conversions created", _get(p4, "conversion_api", "created_per_s"), "/s")
    add("P4", "request p50 / p99", _pair(p4, "conversion_api"), "ms")
    add(
        "P4",
        "gateway CPU per conversion / share of one core",
        _pair(
            p4,
            "conversion_api",
            keys=("gateway_cpu_us_per_request", "gateway_cpu_share_of_one_core"),
        ),
    )
    add("P4", "outbox drained after load", _get(p4, "outbox", "drained_after_s"), "s")
    add(
        "P4",
        "PostgreSQL: waits on the NOTIFY commit lock (samples)",
        _get(
            p4, "db_activity_during_load", "lock_waits", "object:AccessExclusiveLock:pg_database:0"
        ),
    )
    _add_cpu_rows(add, "P4", _get(p4, "cpu_during_load"))
    p5 = _get(benchmarks, "P5", "figures") or {}
    for label in ("small", "large"):
        add(
            "P5",
            f"dispatcher RSS peak, {fmt(_get(p5, 'rss', label, 'queued_at_start'))} queued",
            _get(p5, "rss", label, "rss_peak_mib"),
            "MiB",
        )
    tiers = _get(p5, "retry_tiers") or {}
    depth = fmt(_get(tiers, "waiting_in_tier", "depth"))
    for n, run in enumerate(tiers.get("runs") or [], start=1):
        waiting = f"{depth} in a retry tier" if run["backlog"] else "nothing in retry tiers"
        add("P5", f"fresh postbacks/s, run {n}: {waiting}", run.get("rate_per_s"), "/s")
    for label in ("small", "large"):
        add(
            "P5",
            f"dead-letter page median / p95, "
            f"{fmt(_get(p5, 'dead_letter_page', label, 'stored'))} stored",
            _pair(p5, "dead_letter_page", label, keys=("median_ms", "p95_ms")),
            "ms",
        )
        add(
            "P5",
            f"dead-letter query execution (EXPLAIN ANALYZE), "
            f"{fmt(_get(p5, 'dead_letter_page', label, 'stored'))} stored",
            _get(p5, "dead_letter_page", label, "sql_execution_ms"),
            "ms",
        )
    hc = _get(benchmarks, "HC", "figures") or {}
    for client in ("aiohttp", "httpx"):
        add("HC", f"{client} GET loop, 64 in flight", _get(hc, client, "rps"), "req/s")
        add("HC", f"{client} p50 / p99", _pair(hc, client), "ms")
    lines = ["| Bench | Figure | Value |", "|---|---|---|"]
    for bench, label, value, unit in rows:
        lines.append(f"| {bench} | {label} | {fmt(value)} {unit} |".replace("  |", " |"))
    return lines


def _top(per_unit: dict[str, float] | None, count: int = 6) -> str | None:
    if not per_unit:
        return None
    return ", ".join(f"{name} {value:,.0f}" for name, value in list(per_unit.items())[:count])


def _add_cpu_rows(
    add: Any, bench: str, cpu: dict[str, Any] | None, unit: str = "conversion"
) -> None:
    """Where the whole machine's CPU went, per unit of work (``bench.common.CpuAccount``)."""
    if not cpu:
        return
    add(
        bench,
        f"machine: cores busy / CPU per {unit}, all processes",
        f"{cpu.get('cores_busy')} / {fmt(cpu.get('cpu_us_per_unit_machine'))} µs",
    )
    if cpu.get("steal_share"):
        add(bench, "machine: share of CPU time stolen by the hypervisor", cpu["steal_share"])
    add(bench, f"CPU per {unit} by process (µs)", _top(cpu.get("cpu_us_per_unit_by_command")))
    if cpu.get("postgres_us_per_unit_by_application"):
        add(
            bench,
            f"PostgreSQL CPU per {unit} by client (µs)",
            _top(cpu.get("postgres_us_per_unit_by_application")),
        )


def _pair(d: dict[str, Any], *path: str, keys: tuple[str, str] = ("p50_ms", "p99_ms")) -> Any:
    node = _get(d, *path)
    if not isinstance(node, dict) or keys[0] not in node:
        return None
    return f"{fmt(node[keys[0]])} / {fmt(node.get(keys[1]))}"


def _triple(d: dict[str, Any], *path: str) -> Any:
    node = _get(d, *path)
    if not isinstance(node, dict) or "p50_ms" not in node:
        return None
    return f"{fmt(node['p50_ms'])} / {fmt(node['p99_ms'])} / {fmt(node.get('max_ms'))}"


def _ratio_text(d: dict[str, Any], a: tuple[str, ...], b: tuple[str, ...]) -> Any:
    x, y = _get(d, *a), _get(d, *b)
    if x is None or y is None:
        return None
    return f"{fmt(x)} / {fmt(y)}"


def render(document: dict[str, Any]) -> str:
    meta, benchmarks = document["meta"], document["benchmarks"]
    lines = ["### Machine and run", "", *machine_section(meta), "", "### Targets", ""]
    lines += targets_table(benchmarks)
    lines += ["", "### Figures behind the targets", "", *key_figures(benchmarks), ""]
    notes = [f"- {k}: {n}" for k, b in benchmarks.items() for n in b["notes"]]
    if notes:
        lines += ["### Notes", "", *notes, ""]
    return "\n".join(lines)


BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def update_document(doc: Path, results: Path) -> None:
    """Replace the text between the results markers of ``doc`` with ``results`` rendered."""
    text = doc.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    if not rest:
        raise SystemExit(f"{doc} has no {BEGIN} marker")
    body = render(orjson.loads(results.read_bytes()))
    doc.write_text(f"{head}{BEGIN}\n{body}\n{END}{tail}")


def main() -> None:
    args = sys.argv[1:]
    if len(args) == 3 and args[1] == "--into":
        update_document(Path(args[2]), Path(args[0]))
        return
    for arg in args:
        print(render(orjson.loads(Path(arg).read_bytes())))


if __name__ == "__main__":
    main()
