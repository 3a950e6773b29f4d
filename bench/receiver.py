"""A fast postback receiver for benchmarks: raw asyncio + httptools + uvloop, own process.

It answers every request ``200 ok`` (optionally after ``--delay-ms``), counts them,
notes the first and last arrival, and with ``--record`` keeps (arrival time, URL) of
each request for latency matching. Control paths (not counted):

    GET /__stats    -> {"count", "first", "last"}      (times: time.time())
    GET /__arrivals -> {"arrivals": [[t, url], ...]}
    GET /__reset    -> clears everything

    python -m bench.receiver --port 9000 [--delay-ms 0] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httptools
import orjson
import uvloop

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


class State:
    def __init__(self, record: bool, delay: float) -> None:
        self.record = record
        self.delay = delay
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self.arrivals: list[tuple[float, str]] = []


class ReceiverProtocol(asyncio.Protocol):
    def __init__(self, state: State) -> None:
        self.state = state
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        now = time.time()
        url = self.url
        if url.startswith(b"/__"):
            self._control(url)
            return
        state = self.state
        state.count += 1
        if state.first is None:
            state.first = now
        state.last = now
        if state.record:
            state.arrivals.append((now, url.decode("latin-1")))
        if state.delay:
            asyncio.get_running_loop().call_later(state.delay, self._answer, OK)
        else:
            self._answer(OK)

    def _answer(self, raw: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(raw)

    def _control(self, url: bytes) -> None:
        state = self.state
        if url.startswith(b"/__reset"):
            state.reset()
            body = b'{"reset":true}'
        elif url.startswith(b"/__arrivals"):
            body = orjson.dumps({"arrivals": state.arrivals})
        else:
            body = orjson.dumps({"count": state.count, "first": state.first, "last": state.last})
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
        )
        self._answer(head + body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(port: int, record: bool, delay_ms: float) -> None:
    state = State(record=record, delay=delay_ms / 1000)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: ReceiverProtocol(state), "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.record, args.delay_ms))


if __name__ == "__main__":
    main()
