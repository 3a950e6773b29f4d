"""A lean HTTP/1.1 load client (raw asyncio + httptools) with open- and closed-loop drivers.

wrk2 is not available here, so the constant-rate ("open loop") measurement is ours:
request *i* is due at ``t0 + i / rate`` whatever happened before; a pool of
keep-alive connections takes due requests from a queue, and latency is measured
from the *due* time, not the send time. A slow server therefore shows up as
queueing delay (no coordinated omission), exactly like wrk2's corrected latency.
The generator's own lateness (send time - due time) is reported beside it so a
saturated generator is visible.

CLI (used by P1 at half the peak rate, in its own process):

    python -m bench.openloop --port 8000 --path /get/CODE --rate 3000 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httptools
import orjson

from bench.common import percentile
from bench.traffic import click_headers


def _bursts(slow: list[tuple[float, float]]) -> list[list[float]]:
    """Group slow requests into bursts: [start s, end s, worst ms] each (max 20)."""
    bursts: list[list[float]] = []
    for at, ms in sorted(slow):
        if bursts and at - bursts[-1][1] < 0.05:
            bursts[-1][1] = round(at, 3)
            bursts[-1][2] = max(bursts[-1][2], round(ms, 1))
        else:
            bursts.append([round(at, 3), round(at, 3), round(ms, 1)])
    return bursts[:20]


class ClientConnection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, dict[bytes, bytes], bytes]] | None = None
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()
        self.lost: Exception | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> ClientConnection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(cls, host, port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def on_message_begin(self) -> None:
        self.headers = {}
        self.body = bytearray()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), self.headers, bytes(self.body)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(exc or ConnectionResetError("connection closed"))

    def _fail(self, exc: Exception) -> None:
        self.lost = exc
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    @property
    def usable(self) -> bool:
        return self.transport is not None and self.lost is None

    async def request(self, raw: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        if self.transport is None:
            raise ConnectionResetError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def build_request(
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    host: str = "127.0.0.1",
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# Called with (index, status, headers, body, wall-clock time of the answer).
OnResponse = Callable[[int, int, dict[bytes, bytes], bytes, float], None]


@dataclass
class LoadResult:
    sent: int = 0
    abandoned: int = 0  # due requests never sent because the run hit its time limit
    completed: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)  # from due time (open) / send
    service_ms: list[float] = field(default_factory=list)  # from actual send
    send_lag_ms: list[float] = field(default_factory=list)  # generator lateness
    elapsed_s: float = 0.0
    generator_cpu_s: float = 0.0  # CPU the generator process used while it ran
    slow: list[tuple[float, float]] = field(default_factory=list)  # (due offset s, ms) > 10 ms

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        svc = sorted(self.service_ms)
        lag = sorted(self.send_lag_ms)
        return {
            "sent": self.sent,
            "abandoned": self.abandoned,
            "completed": self.completed,
            "errors": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "elapsed_s": round(self.elapsed_s, 3),
            "rate_per_s": round(self.completed / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "p50_ms": round(percentile(lat, 50), 3),
            "p90_ms": round(percentile(lat, 90), 3),
            "p99_ms": round(percentile(lat, 99), 3),
            "p999_ms": round(percentile(lat, 99.9), 3),
            "max_ms": round(lat[-1], 3) if lat else float("nan"),
            "service_p50_ms": round(percentile(svc, 50), 3),
            "service_p99_ms": round(percentile(svc, 99), 3),
            "send_lag_p99_ms": round(percentile(lag, 99), 3),
            "over_10ms": len(self.slow),
            # When the slow ones were due (s from start): periodic bursts point at a
            # periodic task in the server (cache refresh, flush, GC) rather than load.
            "over_10ms_bursts_at_s": _bursts(self.slow),
            "generator_cpu_us_per_request": round(self.generator_cpu_s / self.completed * 1e6, 1)
            if self.completed and self.generator_cpu_s
            else None,
        }


async def _worker(
    host: str,
    port: int,
    queue: asyncio.Queue[tuple[int, float] | None],
    make_request: Callable[[int], bytes],
    on_response: OnResponse | None,
    result: LoadResult,
    give_up_at: float,
) -> None:
    conn: ClientConnection | None = None
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            index, due = item
            if time.monotonic() > give_up_at:
                result.abandoned += 1
                continue
            raw = make_request(index)
            try:
                if conn is None or not conn.usable:
                    conn = await ClientConnection.open(host, port)
                sent_at = time.monotonic()
                result.sent += 1
                status, headers, body = await conn.request(raw)
            except (OSError, httptools.HttpParserError):
                result.errors += 1
                conn = None
                continue
            done = time.monotonic()
            result.completed += 1
            result.statuses[status] = result.statuses.get(status, 0) + 1
            result.latencies_ms.append((done - due) * 1000)
            result.service_ms.append((done - sent_at) * 1000)
            result.send_lag_ms.append((sent_at - due) * 1000)
            if on_response is not None:
                on_response(index, status, headers, body, time.time())
            if headers.get(b"connection", b"").lower() == b"close":
                conn.close()
                conn = None
    finally:
        if conn is not None:
            conn.close()


async def open_loop(
    host: str,
    port: int,
    rate: float,
    duration: float,
    make_request: Callable[[int], bytes],
    on_response: OnResponse | None = None,
    connections: int = 64,
    total: int | None = None,
    time_limit: float | None = None,
) -> LoadResult:
    """Send at a constant ``rate`` for ``duration`` s (or ``total`` requests); latency from due.

    A server slower than ``rate`` builds a backlog; after ``time_limit`` seconds
    (default: twice the planned duration + 5 s) what is left is abandoned and
    counted, so a slow service cannot stretch the benchmark without bound.
    """
    result = LoadResult()
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    count = total if total is not None else int(rate * duration)
    # Build every request before the clock starts: the generator's CPU per
    # request is then a queue hop and a write, which keeps its own lateness low.
    prebuilt = [make_request(i) for i in range(count)]
    make_request = prebuilt.__getitem__
    start = time.monotonic()
    limit = time_limit if time_limit is not None else 2 * count / rate + 5
    workers = [
        asyncio.create_task(
            _worker(host, port, queue, make_request, on_response, result, start + limit)
        )
        for _ in range(connections)
    ]
    interval = 1.0 / rate
    index = 0
    while index < count:
        now = time.monotonic()
        while index < count and start + index * interval <= now:
            queue.put_nowait((index, start + index * interval))
            index += 1
        if index < count:
            # At least 1 ms: the loop's timers have millisecond resolution, and a
            # shorter sleep becomes a busy spin that eats the core the server needs.
            await asyncio.sleep(max(0.001, start + index * interval - time.monotonic()))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    result.elapsed_s = time.monotonic() - start
    return result


async def closed_loop(
    host: str,
    port: int,
    concurrency: int,
    duration: float,
    make_request: Callable[[int], bytes],
    on_response: OnResponse | None = None,
) -> LoadResult:
    """``concurrency`` clients, each sending its next request when the last one answered."""
    result = LoadResult()
    counter = iter(range(10**12))
    stop_at = time.monotonic() + duration

    async def client() -> None:
        conn: ClientConnection | None = None
        try:
            while time.monotonic() < stop_at:
                index = next(counter)
                raw = make_request(index)
                try:
                    if conn is None or not conn.usable:
                        conn = await ClientConnection.open(host, port)
                    sent_at = time.monotonic()
                    result.sent += 1
                    status, headers, body = await conn.request(raw)
                except (OSError, httptools.HttpParserError):
                    result.errors += 1
                    conn = None
                    continue
                done = time.monotonic()
                result.completed += 1
                result.statuses[status] = result.statuses.get(status, 0) + 1
                result.latencies_ms.append((done - sent_at) * 1000)
                result.service_ms.append((done - sent_at) * 1000)
                if on_response is not None:
                    on_response(index, status, headers, body, time.time())
        finally:
            if conn is not None:
                conn.close()

    start = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.elapsed_s = time.monotonic() - start
    return result


class _PacedConnection(asyncio.Protocol):
    """A keep-alive connection driven by callbacks only (no task or future per request)."""

    def __init__(self, driver: _PacedDriver) -> None:
        self.driver = driver
        self.parser = httptools.HttpResponseParser(self)
        self.transport: Any = None
        self.due = 0.0
        self.sent_at = 0.0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.driver.failed(self)

    def on_message_complete(self) -> None:
        self.driver.answered(self, self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.driver.failed(self)

    def send(self, raw: bytes, due: float) -> None:
        self.due = due
        self.sent_at = time.monotonic()
        self.transport.write(raw)


class _PacedDriver:
    """Open-loop pacing with callbacks: idle connections take due requests at once;
    when none is idle the request waits in a backlog (and its wait counts)."""

    def __init__(self, requests: list[bytes], result: LoadResult) -> None:
        self.requests = requests
        self.result = result
        self.start = 0.0
        self.idle: list[_PacedConnection] = []
        self.backlog: collections.deque[tuple[int, float]] = collections.deque()
        self.outstanding = 0

    def dispatch(self, index: int, due: float) -> None:
        self.outstanding += 1
        if self.idle:
            conn = self.idle.pop()
            self.result.sent += 1
            conn.send(self.requests[index], due)
        else:
            self.backlog.append((index, due))

    def answered(self, conn: _PacedConnection, status: int) -> None:
        done = time.monotonic()
        result = self.result
        result.completed += 1
        result.statuses[status] = result.statuses.get(status, 0) + 1
        latency = (done - conn.due) * 1000
        result.latencies_ms.append(latency)
        result.service_ms.append((done - conn.sent_at) * 1000)
        result.send_lag_ms.append((conn.sent_at - conn.due) * 1000)
        if latency > 10:
            result.slow.append((conn.due - self.start, latency))
        self.outstanding -= 1
        if self.backlog:
            index, due = self.backlog.popleft()
            result.sent += 1
            conn.send(self.requests[index], due)
        else:
            self.idle.append(conn)

    def failed(self, conn: _PacedConnection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)
            return
        if conn.transport is not None:
            conn.transport.close()
        self.result.errors += 1
        self.outstanding -= 1


async def paced_open_loop(
    host: str, port: int, rate: float, duration: float, requests: list[bytes], connections: int
) -> LoadResult:
    """The open-loop schedule of ``open_loop`` with far less CPU per request.

    Used where the generator shares two cores with the server at thousands of
    requests per second (P1 at half the peak). The schedule is released every
    millisecond (the loop's timer resolution), so latency from due time
    includes up to ~1 ms of the generator's own tick.
    """
    loop = asyncio.get_running_loop()
    result = LoadResult()
    driver = _PacedDriver(requests, result)
    for _ in range(connections):
        _, conn = await loop.create_connection(lambda: _PacedConnection(driver), host, port)
        driver.idle.append(conn)
    count = min(len(requests), int(rate * duration))
    interval = 1.0 / rate
    cpu_start = time.process_time()
    start = driver.start = time.monotonic()
    index = 0
    while index < count:
        now = time.monotonic()
        while index < count and start + index * interval <= now:
            driver.dispatch(index, start + index * interval)
            index += 1
        # Not shorter than 1 ms: the loop's timer resolution (shorter spins).
        await asyncio.sleep(max(0.001, start + index * interval - time.monotonic()))
    deadline = time.monotonic() + 30
    while driver.outstanding > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    result.abandoned = driver.outstanding
    result.elapsed_s = time.monotonic() - start
    result.generator_cpu_s = time.process_time() - cpu_start
    for conn in driver.idle:
        if conn.transport is not None:
            conn.transport.close()
    return result


def click_request_factory(path: str) -> Callable[[int], bytes]:
    """GET ``path`` with the rotating visitor mix and a unique external id per request."""
    pairs = click_headers()
    cache = [next(pairs) for _ in range(1000)]

    def make(index: int) -> bytes:
        ua, ip = cache[index % len(cache)]
        return build_request(
            "GET",
            f"{path}?cid=o-{index}&sub1=s{index % 10}",
            {"User-Agent": ua, "X-Forwarded-For": ip, "Accept": "text/html"},
        )

    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--engine", choices=("paced", "queue"), default="paced")
    args = parser.parse_args()

    import uvloop

    # Clients are remote in production: give the generator the CPU when it needs
    # it, so its own scheduling delays don't count as the server's latency.
    # (Needs root; without it the generator runs at normal priority.)
    niceness = 0
    with contextlib.suppress(PermissionError, OSError):
        niceness = os.nice(-10)
    make = click_request_factory(args.path)
    if args.engine == "paced":
        requests = [make(i) for i in range(int(args.rate * args.duration))]
        run = paced_open_loop(
            "127.0.0.1", args.port, args.rate, args.duration, requests, args.connections
        )
    else:
        run = open_loop(
            "127.0.0.1", args.port, args.rate, args.duration, make, connections=args.connections
        )
    result = uvloop.run(run)
    print("OPENLOOP " + orjson.dumps({**result.summary(), "generator_nice": niceness}).decode())


if __name__ == "__main__":
    main()
