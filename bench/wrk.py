"""Run ``wrk --latency`` with the visitor-mix Lua script and parse what it prints."""

from __future__ import annotations

import asyncio
import re
import tempfile
from pathlib import Path
from typing import Any

import orjson

from bench.traffic import wrk_lua_script

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unparsable wrk duration {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk_output(text: str) -> dict[str, Any]:
    """Requests, req/s, latency distribution and errors from ``wrk --latency`` output."""
    figures: dict[str, Any] = {}
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", text, re.MULTILINE):
        figures[f"p{pct}_ms"] = round(_ms(value), 3)
    match = re.search(r"(\d+) requests in ([\d.]+)(\w+),", text)
    if match:
        figures["requests"] = int(match.group(1))
        figures["duration_s"] = round(_ms(match.group(2) + match.group(3)) / 1000, 3)
    match = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if match:
        figures["rps"] = float(match.group(1))
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    figures["socket_errors"] = sum(int(x) for x in match.groups()) if match else 0
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    figures["non_2xx_3xx"] = int(match.group(1)) if match else 0
    match = re.search(r"^WRKJSON (.*)$", text, re.MULTILINE)
    if match:
        exact = orjson.loads(match.group(1))
        figures["p999_ms"] = round(exact["p999_us"] / 1000, 3)
        figures["max_ms"] = round(exact["max_us"] / 1000, 3)
        figures["mean_ms"] = round(exact["mean_us"] / 1000, 3)
    if "rps" not in figures:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{text}")
    return figures


async def run_wrk(
    url_base: str, path: str, threads: int, connections: int, duration: float
) -> dict[str, Any]:
    """``wrk -t -c -d --latency -s <visitor mix>`` against ``url_base + path``."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(wrk_lua_script(path))
    try:
        proc = await asyncio.create_subprocess_exec(
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "5s",
            "--latency",
            "-s",
            script.name,
            url_base,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
    finally:
        Path(script.name).unlink(missing_ok=True)
    text = out.decode(errors="replace")
    figures = parse_wrk_output(text)
    figures["threads"] = threads
    figures["connections"] = connections
    return figures
