"""The lean HTTP/1.1 client behind the dispatcher's sender, against raw loopback servers.

Each scenario runs on the default asyncio loop and on uvloop (what the service runs on).
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from postback_dispatcher.sender import (
    MAX_RETRY_AFTER_SECONDS,
    Http1PostbackSender,
    parse_retry_after,
)
from postback_dispatcher.ssrf import TargetGuard

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
HEADERS = {"User-Agent": "test", "X-Postback-Id": "pb-1"}


class RawServer:
    """A TCP server whose handler writes raw bytes; counts connections and requests."""

    def __init__(self, answer: Callable[[int, bytes], bytes | None]) -> None:
        self.answer = answer  # (request number, request head) -> bytes to write, None: close
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        for writer in self.writers:
            writer.close()
        self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                out = self.answer(len(self.requests), head)
                if out is None:
                    writer.close()
                    return
                writer.write(out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def ok(body: bytes = b"ok", extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode("latin-1") + body


def sender(timeout: float = 2.0) -> Http1PostbackSender:
    return Http1PostbackSender(timeout_seconds=timeout, guard=TargetGuard(enabled=False))


async def keep_alive_and_exact_request() -> None:
    raw = RawServer(lambda n, head: ok(b"fine"))
    async with raw as base:
        client = sender()
        try:
            for _ in range(3):
                result = await client.send(base + "/pb?a=%2F&b=c%20d", HEADERS)
                assert result.status == 200 and result.response_excerpt == "fine", result
        finally:
            await client.close()
    assert raw.connections == 1  # one kept-alive connection for all three
    head = raw.requests[0].decode("latin-1")
    port = base.rsplit(":", 1)[1]
    assert head.startswith("GET /pb?a=%2F&b=c%20d HTTP/1.1\r\n")  # the signed bytes, as they are
    assert f"\r\nHost: 127.0.0.1:{port}\r\n" in head
    assert "\r\nX-Postback-Id: pb-1\r\n" in head and "\r\nUser-Agent: test\r\n" in head


async def chunked_gzip_and_close_delimited_bodies() -> None:
    packed = gzip.compress(b"zipped answer")

    def answer(n: int, head: bytes) -> bytes | None:
        if n == 1:
            return b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nRetry-After: 7\r\n\r\n" + (
                b"4\r\nbusy\r\n5\r\n now!\r\n0\r\n\r\n"
            )
        if n == 2:
            return ok(packed, "Content-Encoding: gzip\r\n")
        return b"HTTP/1.0 200 OK\r\n\r\nuntil the end"

    raw = RawServer(answer)
    async with raw as base:
        client = sender()
        try:
            busy = await client.send(base + "/a", HEADERS)
            assert busy.status == 503 and busy.response_excerpt == "busy now!"
            assert busy.retry_after == 7.0 and busy.error_class == "HTTP503"
            zipped = await client.send(base + "/b", HEADERS)
            assert zipped.status == 200 and zipped.response_excerpt == "zipped answer"

            async def close_soon() -> None:
                await asyncio.sleep(0.1)
                for writer in raw.writers:
                    writer.close()

            closer = asyncio.create_task(close_soon())
            until_eof = await client.send(base + "/c", HEADERS)
            await closer
            assert until_eof.status == 200 and until_eof.response_excerpt == "until the end"
        finally:
            await client.close()


async def reconnects_after_close_and_after_an_idle_drop() -> None:
    def answer(n: int, head: bytes) -> bytes | None:
        if n == 1:
            return ok(extra="Connection: close\r\n")
        if n == 3:
            return None  # drop the kept-alive connection instead of answering
        return ok()

    raw = RawServer(answer)
    async with raw as base:
        client = sender()
        try:
            for _ in range(3):
                result = await client.send(base + "/x", HEADERS)
                assert result.status == 200, result
        finally:
            await client.close()
    # 1: closed by "Connection: close"; 2: new, kept alive; 3: dropped unanswered on the
    # reused connection, so sent once more on a fresh one (4).
    assert len(raw.requests) == 4 and raw.connections == 3


async def errors_are_classified() -> None:
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        await asyncio.sleep(10)

    hole = await asyncio.start_server(never, "127.0.0.1", 0)
    port = hole.sockets[0].getsockname()[1]
    client = sender(timeout=0.3)
    try:
        started = time.monotonic()
        timed_out = await client.send(f"http://127.0.0.1:{port}/slow", HEADERS)
        assert timed_out.error_class == "Timeout" and timed_out.status is None
        assert time.monotonic() - started < 2
        hole.close()
        await hole.wait_closed()
        refused = await client.send(f"http://127.0.0.1:{port}/gone", HEADERS)
        assert refused.error_class == "ConnectionError" and refused.status is None
        broken = RawServer(lambda n, head: b"SMTP ready\r\n\r\n")
        async with broken as base:
            garbage = await client.send(base + "/x", HEADERS)
        assert garbage.status is None and garbage.error_class == "ClientResponseError"
        injected = await client.send("http://127.0.0.1:9/x", {"X-Evil": "a\r\nHost: b"})
        assert injected.error_class == "InvalidURL"
        for url, headers in [
            ("http://127.0.0.1:9/x\x00y", HEADERS),
            ("http://127.0.0.1:9/x?q=\x7f", HEADERS),
            ("http://127.0.0.1:9/x", {"X-Evil": "a\x00b"}),
            ("http://nul\x00host.example/x", HEADERS),
        ]:
            nul = await client.send(url, headers)
            assert nul.error_class == "InvalidURL" and nul.status is None, (url, nul)
    finally:
        await client.close()


async def a_huge_body_is_not_read_to_the_end() -> None:
    body = b"x" * (3 << 20)
    raw = RawServer(lambda n, head: ok(body))
    async with raw as base:
        client = sender()
        try:
            result = await client.send(base + "/big", HEADERS)
            assert result.status == 200 and result.response_excerpt == "x" * 2048
            again = await client.send(base + "/big", HEADERS)
            assert again.status == 200
        finally:
            await client.close()
    assert raw.connections == 2  # the first connection was dropped, not drained


async def interim_answers_are_skipped() -> None:
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(hints + ok(b"same packet"))  # the interim and the final answer together
        await reader.readuntil(b"\r\n\r\n")
        writer.write(hints)
        await writer.drain()
        await asyncio.sleep(0.2)  # the final answer in a later packet
        writer.write(ok(b"later packet", "Retry-After: 3\r\n"))
        await reader.read()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    client = sender()
    try:
        together = await client.send(base + "/a", HEADERS)
        assert together.status == 200 and together.response_excerpt == "same packet", together
        apart = await client.send(base + "/b", HEADERS)
        assert apart.status == 200 and apart.response_excerpt == "later packet", apart
        assert apart.retry_after == 3.0
    finally:
        await client.close()
        server.close()


SCENARIOS = [
    keep_alive_and_exact_request,
    chunked_gzip_and_close_delimited_bodies,
    reconnects_after_close_and_after_an_idle_drop,
    errors_are_classified,
    a_huge_body_is_not_read_to_the_end,
    interim_answers_are_skipped,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_lean_client(scenario: Callable[[], Awaitable[None]], loop: str) -> None:
    run: Any = uvloop.run if loop == "uvloop" else asyncio.run
    run(asyncio.wait_for(scenario(), 20))


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 120 ", 120.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: now
        ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER_SECONDS),
        ("9" * 5000, MAX_RETRY_AFTER_SECONDS),
        ("inf", None),
        ("nan", None),
        ("1e400", None),
        ("-5", None),
        ("1.5", 1.5),
        ("1.", None),
        ("1_000", None),
        ("\u0663", None),  # an Arabic-Indic digit
        ("\x00", None),
        ("Mon, 99 Foo 2026 99:99:99 GMT", None),
    ],
)
def test_retry_after_is_delta_seconds_or_a_date_and_bounded(
    header: str, seconds: float | None
) -> None:
    assert parse_retry_after(header) == seconds
