"""The postback receiver of the chaos run: records every postback, fails on command.

Own process (raw asyncio + httptools, like ``bench.receiver``), so a busy harness
does not slow its answers. Every request is recorded under its ``X-Postback-Id``:
how many arrived and how many got a 2xx. Answers depend on the mode, which the
harness switches on its fault schedule:

    ok       200 (but 410 Gone for URLs with ``cid=gone-``: a permanent refusal,
             which the dispatcher dead-letters at once)
    503      503 Service Unavailable
    timeout  no answer at all; the connection is held until the client gives up

Control paths (not recorded):

    GET /__mode/<ok|503|timeout>   -> {"mode": ...}
    GET /__stats                    -> {"mode", "requests", "ids": {id: [arrived, ok, t_ok...]}}

(``t_ok``: ``time.time()`` of each 2xx answer, so a duplicate can be placed in time.)

    python -m bench.chaos.receiver --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httptools
import orjson
import uvloop

MODES = ("ok", "503", "timeout")
HOLD_SECONDS = 60.0  # a "timeout" answer is never sent; the hold is only a bound
GONE_MARKER = b"cid=gone-"


def _response(status: str, body: bytes, content_type: bytes = b"text/plain") -> bytes:
    return (
        b"HTTP/1.1 "
        + status.encode()
        + b"\r\nContent-Type: "
        + content_type
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


OK = _response("200 OK", b"ok")
GONE = _response("410 Gone", b"gone")
UNAVAILABLE = _response("503 Service Unavailable", b"unavailable")


class State:
    def __init__(self) -> None:
        self.mode = "ok"
        self.requests = 0
        self.ids: dict[str, list[float]] = {}


class ReceiverProtocol(asyncio.Protocol):
    def __init__(self, state: State) -> None:
        self.state = state
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.header_name = b""
        self.postback_id = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.postback_id = ""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-postback-id":
            self.postback_id = value.decode("latin-1")

    def on_message_complete(self) -> None:
        if self.url.startswith(b"/__"):
            self._control(self.url)
            return
        state = self.state
        state.requests += 1
        counts = state.ids.setdefault(self.postback_id, [0, 0])
        counts[0] += 1
        if state.mode == "503":
            self._write(UNAVAILABLE)
        elif state.mode == "timeout":
            loop = asyncio.get_running_loop()
            loop.call_later(HOLD_SECONDS, self._close)
        elif GONE_MARKER in self.url:
            self._write(GONE)
        else:
            counts[1] += 1
            counts.append(round(time.time(), 3))
            self._write(OK)

    def _control(self, url: bytes) -> None:
        state = self.state
        if url.startswith(b"/__mode/"):
            mode = url[len(b"/__mode/") :].decode("latin-1")
            if mode not in MODES:
                self._write(_response("400 Bad Request", b'{"error":"unknown mode"}'))
                return
            state.mode = mode
            body = orjson.dumps({"mode": mode})
        else:
            body = orjson.dumps({"mode": state.mode, "requests": state.requests, "ids": state.ids})
        self._write(_response("200 OK", body, b"application/json"))

    def _write(self, raw: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(raw)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(port: int) -> None:
    state = State()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: ReceiverProtocol(state), "127.0.0.1", port, backlog=1024, reuse_address=True
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
