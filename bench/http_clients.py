"""The sender's HTTP client, chosen by measurement: aiohttp vs httpx GET loops.

Each client runs in its own process on uvloop and sends ``--requests`` GETs to a
loopback receiver with ``--concurrency`` requests in flight (one shared session /
client, a connection pool as large as the concurrency), like the dispatcher does.
The same loop with aiohttp is P2's ceiling ("raw loop").

    python -m bench.http_clients --client aiohttp --url http://127.0.0.1:9000/pb \
        --concurrency 64 --requests 20000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import orjson

from bench.common import percentile


def _target(url: str, index: int) -> str:
    # Distinct URLs, shaped like a rendered postback, so nothing is cached anywhere.
    return f"{url}?click_id={1_000_000 + index}&external_id=ext-{index}&payout=0.5000&country=US"


async def _loop_aiohttp(url: str, concurrency: int, total: int) -> list[float]:
    import aiohttp

    latencies: list[float] = []
    counter = iter(range(total))
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            for index in counter:
                start = time.perf_counter()
                async with session.get(_target(url, index)) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"status {resp.status}")
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def _loop_httpx(url: str, concurrency: int, total: int) -> list[float]:
    import httpx

    latencies: list[float] = []
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=15) as client:

        async def worker() -> None:
            for index in counter:
                start = time.perf_counter()
                resp = await client.get(_target(url, index))
                if resp.status_code != 200:
                    raise RuntimeError(f"status {resp.status_code}")
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


LOOPS = {"aiohttp": _loop_aiohttp, "httpx": _loop_httpx}


async def get_loop(client: str, url: str, concurrency: int, total: int) -> dict[str, Any]:
    start = time.perf_counter()
    latencies = await LOOPS[client](url, concurrency, total)
    elapsed = time.perf_counter() - start
    lat = sorted(x * 1000 for x in latencies)
    return {
        "client": client,
        "requests": len(lat),
        "concurrency": concurrency,
        "elapsed_s": round(elapsed, 3),
        "rps": round(len(lat) / elapsed, 1),
        "p50_ms": round(percentile(lat, 50), 3),
        "p99_ms": round(percentile(lat, 99), 3),
    }


async def run_get_loop_process(
    client: str, url: str, concurrency: int, total: int, timeout: float = 300
) -> dict[str, Any]:
    """Run one GET loop in a fresh process (uvloop) and return its figures."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.http_clients",
        "--client",
        client,
        "--url",
        url,
        "--concurrency",
        str(concurrency),
        "--requests",
        str(total),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    for line in out.decode().splitlines():
        if line.startswith("GETLOOP "):
            result: dict[str, Any] = orjson.loads(line[len("GETLOOP ") :])
            return result
    raise RuntimeError(f"{client} loop failed: {err.decode()[-2000:]}")


SIZES = {"quick": {"aiohttp": 2000, "httpx": 200}, "full": {"aiohttp": 20000, "httpx": 3000}}
CONCURRENCY = 64


async def run(mode: str, result: Any) -> None:
    """Benchmark entry (``--only HC``): both clients against one fast loopback receiver."""
    from bench.services import receiver

    sizes = SIZES[mode]
    result.notes.append(
        f"GET loop, {CONCURRENCY} in flight, one client per process on uvloop, "
        "raw asyncio receiver (bench/receiver.py) in its own process"
    )
    async with receiver("hc-receiver") as rcv:
        url = rcv.base + "/postback"
        for client in ("aiohttp", "httpx"):
            result.figures[client] = await run_get_loop_process(
                client, url, CONCURRENCY, sizes[client]
            )
    ratio = result.figures["aiohttp"]["rps"] / result.figures["httpx"]["rps"]
    result.figures["aiohttp_over_httpx"] = round(ratio, 1)
    result.target("aiohttp req/s ÷ httpx req/s (informative)", round(ratio, 1), ">=", 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--client", choices=sorted(LOOPS), required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=10_000)
    args = parser.parse_args()

    import uvloop

    result = uvloop.run(get_loop(args.client, args.url, args.concurrency, args.requests))
    print("GETLOOP " + orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
