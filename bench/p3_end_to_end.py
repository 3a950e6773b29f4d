"""P3 - end to end: conversion API answer to the publisher's postback arriving.

Gateway, dispatcher and a recording receiver run as separate processes on one
fresh database/vhost. Clicks are made first through GET /get/{code} (their
internal ids read from the offer URL in ``Location``). Then conversions are
POSTed to /api/v1/conversions at a constant RATE (open loop, advertiser
X-Api-Key); for each 201 we note the wall-clock time of the answer, the
receiver notes the wall-clock arrival of each postback, and the two are matched
by ``click_id`` in the postback URL. Latency = arrival - answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aio_pika
import asyncpg
import orjson

from bench.common import (
    CpuAccount,
    Result,
    Skipped,
    drop_outbox_notify_if_asked,
    http_status,
    infrastructure,
    percentile,
    say,
    wait_until,
)
from bench.openloop import build_request, click_request_factory, open_loop
from bench.seed import Seeded, seed_click_scenario
from bench.services import dispatcher, gateway, receiver
from postback_core.topology import WORK_QUEUE

# The target rate; BENCH_P3_RATE is an experiment switch (how latency behaves below it).
RATE = float(os.environ.get("BENCH_P3_RATE", "500"))
SIZES = {"quick": {"duration": 1.0, "warmup": 0.5}, "full": {"duration": 20.0, "warmup": 3.0}}
SIMPLE_OFFER = [{"name": "Any visitor", "payout": "0.5000", "weight": 100}]
POSTBACK_TEMPLATE = "/pb?click_id={click_id}&external_id={external_id}&payout={payout}"


async def prepare_clicks(base: str, seeded: Seeded, count: int) -> list[int]:
    """Make ``count`` clicks on the first SmartLink; returns their internal ids."""
    port = int(base.rsplit(":", 1)[1])
    code = seeded.codes[0]

    async def redirects() -> bool:
        return await http_status(f"{base}/get/{code}?cid=probe") == 302

    try:
        await wait_until(redirects, 15, interval=0.2, what="SmartLink redirect")
    except TimeoutError:
        raise Skipped("GET /get/{code} does not redirect yet") from None

    ids: list[int | None] = [None] * count

    def on_click(index: int, status: int, headers: dict[bytes, bytes], _b: bytes, _t: float):
        location = headers.get(b"location", b"").decode()
        values = parse_qs(urlsplit(location).query).get("click_id")
        if status == 302 and values:
            ids[index] = int(values[0])

    await open_loop(
        "127.0.0.1",
        port,
        rate=3000,
        duration=0,
        total=count,
        make_request=click_request_factory(f"/get/{code}"),
        on_response=on_click,
        connections=16,
        time_limit=120,
    )
    made = [i for i in ids if i is not None]
    say(f"made {len(made):,} clicks")
    if len(made) < count:
        raise RuntimeError(f"only {len(made)}/{count} clicks redirected with a click_id")
    return made


def conversion_request(api_key: str, click_id: int, txid: str | None = None) -> bytes:
    body: dict[str, Any] = {"click_id": click_id}
    if txid is not None:
        body["txid"] = txid
    return build_request(
        "POST",
        "/api/v1/conversions",
        {"Content-Type": "application/json", "X-Api-Key": api_key},
        orjson.dumps(body),
    )


async def probe_conversions_api(base: str, api_key: str, click_id: int) -> None:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            base + "/api/v1/conversions",
            json={"click_id": click_id, "txid": "probe"},
            headers={"X-Api-Key": api_key},
        ) as resp,
    ):
        text = await resp.text()
        if resp.status == 404 and "Not Found" in text:
            raise Skipped("POST /api/v1/conversions is not served yet")
        if resp.status not in (200, 201):
            raise RuntimeError(f"conversion probe -> {resp.status}: {text[:300]}")


async def _wait_for_postbacks(rcv: Any, expected: int, disp: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while await rcv.count() < expected:
        if time.monotonic() > deadline:
            return
        if not disp.alive():
            raise RuntimeError(f"dispatcher exited:\n{disp.log_tail()}")
        await asyncio.sleep(0.1)


@asynccontextmanager
async def backlog_sampler(infra: Any, into: list[list[float]]) -> AsyncIterator[None]:
    """Every 0.5 s: [seconds, unpublished outbox rows, ready messages in the work queue].

    Tells where conversions wait: in the outbox (the gateway's relay is behind) or
    in the work queue (the dispatcher is behind).
    """
    conn = await asyncpg.connect(infra.dsn)
    amqp = await aio_pika.connect(infra.amqp_url)
    stop = asyncio.Event()
    start = time.monotonic()

    async def sample() -> None:
        channel = await amqp.channel()
        while not stop.is_set():
            outbox = await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            queue = await channel.declare_queue(WORK_QUEUE, passive=True)
            depth = queue.declaration_result.message_count or 0
            into.append([round(time.monotonic() - start, 1), outbox, depth])
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    task = asyncio.create_task(sample())
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await task
        await amqp.close()
        await conn.close()


async def run(mode: str, result: Result) -> None:
    duration, warmup = SIZES[mode]["duration"], SIZES[mode]["warmup"]
    count, warm = int(RATE * duration), int(RATE * warmup)
    result.notes.append(
        f"{count} conversions at {RATE:.0f}/s open loop after a {warmup:g}s warm-up at the same "
        "rate; gateway + dispatcher + receiver each in its own process; latency = receiver "
        "arrival - API answer (wall clock)"
    )
    async with infrastructure("p3") as infra:
        await drop_outbox_notify_if_asked(infra, result)
        await _measure(infra, result, count, warm, duration, warmup)


async def _measure(
    infra: Any, result: Result, count: int, warm: int, duration: float, warmup: float
) -> None:
    async with (
        receiver("p3-receiver", record=True) as rcv,
        gateway(infra, "p3-gateway") as (_gw, base),
        dispatcher(infra, "p3-dispatcher") as (disp, _dbase),
    ):
        seeded = await seed_click_scenario(
            base, infra.dsn, offers=SIMPLE_OFFER, postback_url=rcv.base + POSTBACK_TEMPLATE
        )
        result.figures["seeded_via"] = seeded.ways
        all_clicks = await prepare_clicks(base, seeded, count + warm + 1)
        probe_click = all_clicks.pop()
        await probe_conversions_api(base, seeded.advertiser_key, probe_click)
        key = seeded.advertiser_key
        port = int(base.rsplit(":", 1)[1])

        # Warm-up: pools, statement caches and key caches of both services.
        warm_clicks, clicks = all_clicks[:warm], all_clicks[warm:]
        await open_loop(
            "127.0.0.1",
            port,
            rate=RATE,
            duration=warmup,
            total=warm,
            make_request=lambda i: conversion_request(key, warm_clicks[i]),
            connections=64,
        )
        await _wait_for_postbacks(rcv, warm + 1, disp)
        await rcv.reset()
        say(f"warm-up done ({warm} conversions)")

        answered: dict[int, float] = {}

        def on_conversion(index: int, status: int, _h: Any, _b: bytes, at: float) -> None:
            if status == 201:
                answered[clicks[index]] = at

        backlog: list[list[float]] = []
        account = CpuAccount(infra.dsn)
        account.start()
        started = time.monotonic()
        async with backlog_sampler(infra, backlog):
            api = await open_loop(
                "127.0.0.1",
                port,
                rate=RATE,
                duration=duration,
                total=count,
                make_request=lambda i: conversion_request(key, clicks[i]),
                on_response=on_conversion,
                connections=64,
            )
            result.figures["conversion_api"] = api.summary()
            say(f"{len(answered):,} conversions answered 201 at {api.summary()['rate_per_s']}/s")
            await _wait_for_postbacks(rcv, len(answered), disp)
        result.figures["cpu_during_run"] = account.stop(
            max(len(answered), 1), time.monotonic() - started
        )
        result.figures["cpu_during_run"][
            "postgres_us_per_unit_by_application"
        ] = await account.postgres_by_application(max(len(answered), 1))
        result.figures["backlog_timeline"] = {
            "columns": ["s", "outbox_unpublished", "work_queue_ready"],
            "samples": backlog,
            "peak_outbox": max((b[1] for b in backlog), default=None),
            "peak_work_queue": max((b[2] for b in backlog), default=None),
        }
        say(
            f"peak backlog: {result.figures['backlog_timeline']['peak_outbox']} in the outbox, "
            f"{result.figures['backlog_timeline']['peak_work_queue']} in the work queue"
        )
        arrivals = await rcv.arrivals()
        say(f"receiver has {len(arrivals):,} postbacks")

    if not arrivals:
        raise Skipped("no postback arrived within 30 s (dispatcher consumer not ready?)")
    arrived: dict[int, float] = {}
    for at, url in arrivals:
        values = parse_qs(urlsplit(url).query).get("click_id")
        if values:
            arrived.setdefault(int(values[0]), at)
    latencies = sorted((arrived[cid] - t) * 1000 for cid, t in answered.items() if cid in arrived)
    missing = len(answered) - len(latencies)
    result.figures["end_to_end"] = {
        "conversions_201": len(answered),
        "postbacks_matched": len(latencies),
        "missing_after_30s": missing,
        "p50_ms": round(percentile(latencies, 50), 2),
        "p90_ms": round(percentile(latencies, 90), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(latencies[-1], 2) if latencies else None,
    }
    result.target(
        "end-to-end p50 (API answer → postback)",
        round(percentile(latencies, 50), 2),
        "<=",
        20.0,
        "ms",
    )
    result.target("end-to-end p99", round(percentile(latencies, 99), 2), "<=", 100.0, "ms")
    if missing:
        result.notes.append(f"{missing} conversions had no postback within 30 s")
