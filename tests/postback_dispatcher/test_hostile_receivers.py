"""The dispatcher's sender against receivers that misbehave on purpose.

Every case runs ``Http1PostbackSender`` (what the dispatcher sends with) against a
raw loopback server from ``tests.support.hostile`` and checks what the attempt
log would show: the error class, the status, a duration bounded by the request
timeout, and, where a receiver tries to make the dispatcher swallow data, that
the memory the client allocated stays small. After each case the same sender
must still deliver to a healthy receiver. Each case runs on asyncio and uvloop.
"""

from __future__ import annotations

import asyncio
import socket
import tracemalloc
import zlib
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

import pytest
import uvloop

from postback_dispatcher.sender import EXCERPT_BYTES, Http1PostbackSender, SendResult
from postback_dispatcher.ssrf import Resolve, TargetGuard
from tests.support.hostile import (
    CHUNK,
    HostileServer,
    LoopbackCertificates,
    answer_ok,
    make_test_ca,
)
from tests.support.servers import free_port

TIMEOUT = 1.0  # the sender's request timeout in these tests
SLACK = 2.5  # scheduling slack on a loaded machine, on top of the timeout
HOP_SECONDS = 0.6  # one slow redirect hop: under the timeout alone, not twice
MEMORY_BOUND = 4 << 20  # what the client may allocate while a receiver floods it
BOMB_BYTES = 200 << 20  # what a flooding receiver tries to send
HEADERS = {"User-Agent": "postback-test", "X-Postback-Id": "pb-hostile"}

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


class Harness:
    """Senders for one case; afterwards each must still reach a healthy receiver."""

    def __init__(
        self, healthy: HostileServer, healthy_url: str, certs: LoopbackCertificates
    ) -> None:
        self.healthy = healthy
        self.healthy_url = healthy_url
        self.certs = certs
        self._senders: list[Http1PostbackSender] = []

    def sender(self, guard: TargetGuard | None = None, **options: Any) -> Http1PostbackSender:
        sender = Http1PostbackSender(
            timeout_seconds=TIMEOUT, guard=guard or TargetGuard(enabled=False), **options
        )
        self._senders.append(sender)
        return sender

    def guard(self, resolve: Resolve, allowed_ports: Collection[int] = ()) -> TargetGuard:
        """The real SSRF guard; loopback stands in for public hosts on the given ports."""
        ports = [self.healthy.port, *allowed_ports]
        return TargetGuard(resolve=resolve, allowed_targets=[("127.0.0.1", p) for p in ports])

    async def check_healthy_afterwards(self) -> None:
        for sender in self._senders:
            after = await sender.send(self.healthy_url + "/after", HEADERS)
            assert after.status == 200 and after.response_excerpt == "ok", after

    async def close(self) -> None:
        for sender in self._senders:
            await sender.close()


def assert_bounded(result: SendResult) -> None:
    assert result.duration_ms < (TIMEOUT + SLACK) * 1000, result


async def measured(send: Awaitable[SendResult]) -> tuple[SendResult, int]:
    """The result and the peak of memory allocated (by anyone) while it ran."""
    tracemalloc.start()
    try:
        result = await send
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


async def loopback(host: str, port: int) -> list[tuple[str, int]]:
    return [("127.0.0.1", socket.AF_INET)]


# -- floods: the client must stop reading early, keep little, and say why ---------------


async def header_bomb(h: Harness) -> None:
    async def behaviour(server: HostileServer, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        await server.send(writer, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Bomb: ")
        await server.send_forever(writer, b"a" * CHUNK)

    bomb = HostileServer(behaviour)
    async with bomb as url:
        result, peak = await measured(h.sender().send(url + "/pb", HEADERS))
        await asyncio.wait_for(bomb.client_went_away.wait(), TIMEOUT + SLACK)
    assert result.error_class == "ResponseTooLarge" and result.status is None, result
    assert "8190" in (result.error_message or ""), result
    assert result.duration_ms < TIMEOUT * 1000, result  # refused early, not timed out
    assert peak < MEMORY_BOUND, peak
    assert bomb.bytes_written < BOMB_BYTES // 4  # it stopped reading long before the end


async def too_many_headers(h: Harness) -> None:
    async def behaviour(server: HostileServer, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        await server.send(writer, b"HTTP/1.1 200 OK\r\n")
        await server.send_forever(writer, b"X-Header: 1\r\n" * 5000)

    bomb = HostileServer(behaviour)
    async with bomb as url:
        result, peak = await measured(h.sender().send(url + "/pb", HEADERS))
    assert result.error_class == "ResponseTooLarge" and result.status is None, result
    assert "128" in (result.error_message or ""), result
    assert result.duration_ms < TIMEOUT * 1000, result
    assert peak < MEMORY_BOUND, peak


async def status_line_bomb(h: Harness) -> None:
    async def behaviour(server: HostileServer, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        await server.send(writer, b"HTTP/1.1 200 ")
        await server.send_forever(writer, b"O" * CHUNK)

    bomb = HostileServer(behaviour)
    async with bomb as url:
        result, peak = await measured(h.sender().send(url + "/pb", HEADERS))
    assert result.error_class == "ResponseTooLarge" and result.status is None, result
    assert result.duration_ms < TIMEOUT * 1000, result
    assert peak < MEMORY_BOUND, peak


def chunked_framing_bomb(where: str) -> Callable[[Harness], Awaitable[None]]:
    """A chunked body whose trailer header, or a chunk extension, never ends."""

    async def case(h: Harness) -> None:
        async def behaviour(server: HostileServer, reader: Reader, writer: Writer) -> None:
            await server.read_request(reader)
            head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"
            bomb = b"0\r\nX-Trailer: " if where == "trailer" else b"2;ext="
            await server.send(writer, head + bomb)
            await server.send_forever(writer, b"a" * CHUNK)

        flood = HostileServer(behaviour)
        async with flood as url:
            result, peak = await measured(h.sender().send(url + "/pb", HEADERS))
        assert result.error_class == "ResponseTooLarge" and result.status is None, result
        assert result.duration_ms < TIMEOUT * 1000, result
        assert peak < MEMORY_BOUND, peak

    case.__name__ = f"chunked_{where}_bomb"
    return case


def endless_body(chunked: bool) -> Callable[[Harness], Awaitable[None]]:
    async def case(h: Harness) -> None:
        async def behaviour(server: HostileServer, reader: Reader, writer: Writer) -> None:
            await server.read_request(reader)
            if chunked:
                await server.send(writer, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                await server.send_forever(writer, b"%x\r\n%s\r\n" % (CHUNK, b"x" * CHUNK))
            else:
                await server.send(writer, b"HTTP/1.1 200 OK\r\n\r\n")
                await server.send_forever(writer, b"x" * CHUNK)

        flood = HostileServer(behaviour)
        async with flood as url:
            sender = h.sender()
            result, peak = await measured(sender.send(url + "/pb", HEADERS))
            await asyncio.wait_for(flood.client_went_away.wait(), TIMEOUT + SLACK)
            # The answer counts (a 200 is a 200) ...
            assert result.status == 200 and result.error_class is None, result
            assert result.response_excerpt == "x" * EXCERPT_BYTES
            assert result.duration_ms < TIMEOUT * 1000, result  # not read until the deadline
            assert peak < MEMORY_BOUND, peak
            assert flood.bytes_written < BOMB_BYTES // 4
            # ... but the connection is not drained for ever nor reused.
            await sender.send(url + "/again", HEADERS)
            assert flood.connections == 2

    case.__name__ = "endless_chunked_body" if chunked else "endless_body"
    return case


async def gzip_bomb(h: Harness) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    zeros = bytes(1 << 20)
    packed = b"".join(packer.compress(zeros) for _ in range(16)) + packer.flush()  # 16 MiB

    async def behaviour(server: HostileServer, reader: Reader, writer: Writer) -> None:
        while True:
            await server.read_request(reader)
            head = f"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {len(packed)}\r\n"
            await server.send(writer, head.encode() + b"\r\n" + packed)

    bomb = HostileServer(behaviour)
    async with bomb as url:
        result, peak = await measured(h.sender().send(url + "/pb", HEADERS))
    assert result.status == 200 and result.error_class is None, result
    assert result.response_excerpt == "\x00" * EXCERPT_BYTES  # inflated, but only the excerpt
    assert_bounded(result)
    # The 2 KiB excerpt alone would inflate to 2 MiB: it is inflated only up to the excerpt.
    assert peak < 1 << 20, peak


# -- slow receivers: the request deadline bounds the whole answer ------------------------


async def slow_drip(h: Harness) -> None:
    async def behaviour(server: HostileServer, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        await server.drip(writer, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", every=1.0)

    async with HostileServer(behaviour) as url:
        result = await h.sender().send(url + "/pb", HEADERS)
    # 40 bytes at one a second would take 40 s: the deadline ends it.
    assert result.error_class == "Timeout" and result.status is None, result
    assert result.duration_ms >= TIMEOUT * 1000 * 0.9, result
    assert_bounded(result)


async def slow_header(h: Harness) -> None:
    async def behaviour(server: HostileServer, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        await server.send(writer, b"HTTP/1.1 200 OK\r\nContent-Le")
        await asyncio.sleep(60)

    async with HostileServer(behaviour) as url:
        result = await h.sender().send(url + "/pb", HEADERS)
    assert result.error_class == "Timeout" and result.status is None, result
    assert_bounded(result)


async def slow_redirect_chain(h: Harness) -> None:
    """Each hop answers within the timeout, the chain does not: one deadline for the send."""

    async def behaviour(server: HostileServer, reader: Reader, writer: Writer) -> None:
        while True:
            await server.read_request(reader)
            await asyncio.sleep(HOP_SECONDS)
            head = f"HTTP/1.1 302 Found\r\nLocation: /hop{server.requests}\r\n"
            await server.send(writer, head.encode() + b"Content-Length: 0\r\n\r\n")

    chain = HostileServer(behaviour)
    async with chain as url:
        result = await h.sender().send(url + "/hop0", HEADERS)
    # Four hops of 0.6 s would take 2.4 s: the deadline cuts the second one.
    assert result.error_class == "Timeout" and result.status is None, result
    assert result.final_url.endswith("/hop1"), result
    assert chain.requests == 2
    assert_bounded(result)


async def slow_dns_redirect_chain(h: Harness) -> None:
    """Each hop's DNS lookup answers within the timeout, the chain of them does not."""

    async def slow_resolve(host: str, port: int) -> list[tuple[str, int]]:
        await asyncio.sleep(HOP_SECONDS)
        return [("127.0.0.1", socket.AF_INET)]

    async def behaviour(server: HostileServer, reader: Reader, writer: Writer) -> None:
        while True:
            await server.read_request(reader)
            location = f"http://hop{server.requests}.example:{server.port}/pb"
            head = f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n"
            await server.send(writer, head.encode())

    chain = HostileServer(behaviour)
    async with chain as url:
        sender = h.sender(h.guard(slow_resolve, [chain.port]))
        result = await sender.send(url + "/pb", HEADERS)
    # Three lookups of 0.6 s would take 1.8 s: the deadline cuts the second one.
    assert result.error_class == "DNSError" and result.status is None, result
    assert result.final_url.startswith("http://hop2.example:"), result
    assert chain.requests == 2
    assert_bounded(result)


# -- broken answers ----------------------------------------------------------------------


async def pipelined_junk_after_a_complete_answer(h: Harness) -> None:
    async def behaviour(server: HostileServer, reader: Reader, writer: Writer) -> None:
        while True:
            await server.read_request(reader)
            await server.send(
                writer,
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\nfail",
            )

    junk = HostileServer(behaviour)
    async with junk as url:
        sender = h.sender()
        first = await sender.send(url + "/pb", HEADERS)
        assert first.status == 200 and first.error_class is None, first
        assert first.response_excerpt == "ok"
        second = await sender.send(url + "/pb", HEADERS)
        assert second.status == 200 and second.error_class is None, second
    assert junk.connections == 2  # the connection with the stray bytes was not reused


async def invalid_status_line(h: Harness) -> None:
    async def behaviour(server: HostileServer, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        await server.send(writer, b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n")
        await asyncio.sleep(60)

    async with HostileServer(behaviour) as url:
        result = await h.sender().send(url + "/pb", HEADERS)
    assert result.error_class == "ClientResponseError" and result.status is None, result
    assert result.duration_ms < TIMEOUT * 1000, result


async def no_status_line(h: Harness) -> None:
    async def behaviour(server: HostileServer, reader: Reader, writer: Writer) -> None:
        writer.close()

    async with HostileServer(behaviour) as url:
        result = await h.sender().send(url + "/pb", HEADERS)
    assert result.error_class == "ServerDisconnectedError" and result.status is None, result
    assert_bounded(result)


async def reset_mid_response(h: Harness) -> None:
    async def behaviour(server: HostileServer, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        await server.send(writer, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await asyncio.sleep(0.05)
        server.reset(writer)

    async with HostileServer(behaviour) as url:
        result = await h.sender().send(url + "/pb", HEADERS)
    assert result.error_class == "ServerDisconnectedError" and result.status is None, result
    assert_bounded(result)


# -- nobody there --------------------------------------------------------------------------


async def connection_refused(h: Harness) -> None:
    result = await h.sender().send(f"http://127.0.0.1:{free_port()}/pb", HEADERS)
    assert result.error_class == "ConnectionError" and result.status is None, result
    assert_bounded(result)


async def unknown_host(h: Harness) -> None:
    async def nxdomain(host: str, port: int) -> list[tuple[str, int]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    result = await h.sender(h.guard(nxdomain)).send("http://unknown-host.invalid/pb", HEADERS)
    assert result.error_class == "DNSError" and result.status is None, result
    assert_bounded(result)


async def dns_never_answers(h: Harness) -> None:
    async def silent(host: str, port: int) -> list[tuple[str, int]]:
        await asyncio.sleep(60)
        raise AssertionError("unreachable")

    result = await h.sender(h.guard(silent)).send("http://slow-dns.example/pb", HEADERS)
    assert result.error_class == "DNSError" and result.status is None, result
    assert_bounded(result)


# -- redirects ------------------------------------------------------------------------------


async def redirect_loop(h: Harness) -> None:
    targets: dict[str, str] = {}

    def redirecting(name: str) -> Any:
        async def behaviour(server: HostileServer, reader: Reader, writer: Writer) -> None:
            while True:
                await server.read_request(reader)
                location = targets["b" if name == "a" else "a"]
                head = f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n"
                await server.send(writer, head.encode())

        return behaviour

    a, b = HostileServer(redirecting("a")), HostileServer(redirecting("b"))
    async with a as url_a, b as url_b:
        targets.update(a=url_a + "/a", b=url_b + "/b")
        result = await h.sender().send(url_a + "/a", HEADERS)
    assert result.error_class == "TooManyRedirects" and result.status == 302, result
    assert a.requests + b.requests == 4  # the first request and three redirects
    assert_bounded(result)


async def redirect_to_a_private_address(h: Harness) -> None:
    async def behaviour(server: HostileServer, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        head = "HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/latest/meta-data/\r\n"
        await server.send(writer, head.encode() + b"Content-Length: 0\r\n\r\n")

    hop = HostileServer(behaviour)
    async with hop:
        sender = h.sender(h.guard(loopback, [hop.port]))
        result = await sender.send(f"http://partner.example:{hop.port}/pb", HEADERS)
    assert result.error_class == "SSRFBlocked" and result.status is None, result
    assert result.final_url == "http://169.254.169.254/latest/meta-data/"
    assert hop.requests == 1
    assert_bounded(result)


# -- TLS --------------------------------------------------------------------------------


async def tls_self_signed_is_refused(h: Harness) -> None:
    async with HostileServer(answer_ok, tls=h.certs.server_context()) as url:
        result = await h.sender().send(url + "/pb", HEADERS)
    assert result.error_class == "TLSError" and result.status is None, result
    assert "certificate" in (result.error_message or ""), result
    assert_bounded(result)


async def tls_with_a_trusted_test_ca(h: Harness) -> None:
    server = HostileServer(answer_ok, tls=h.certs.server_context())
    async with server as url:
        sender = h.sender(ssl_context=h.certs.client_context())
        for _ in range(2):
            result = await sender.send(url + "/pb", HEADERS)
            assert result.status == 200 and result.response_excerpt == "ok", result
    assert server.connections == 1  # kept alive over TLS too


async def tls_to_a_plain_http_server(h: Harness) -> None:
    async def behaviour(server: HostileServer, reader: Reader, writer: Writer) -> None:
        await reader.read(1024)  # the TLS ClientHello
        await server.send(writer, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        writer.close()

    async with HostileServer(behaviour) as url:
        result = await h.sender().send(url.replace("http://", "https://") + "/pb", HEADERS)
    assert result.error_class == "TLSError" and result.status is None, result
    assert_bounded(result)


async def tls_handshake_never_completes(h: Harness) -> None:
    async def behaviour(server: HostileServer, reader: Reader, writer: Writer) -> None:
        await reader.read(1024)  # the TLS ClientHello, never answered
        await asyncio.sleep(60)

    async with HostileServer(behaviour) as url:
        result = await h.sender().send(url.replace("http://", "https://") + "/pb", HEADERS)
    assert result.error_class == "Timeout" and result.status is None, result
    assert_bounded(result)


CASES: list[Callable[[Harness], Awaitable[None]]] = [
    header_bomb,
    too_many_headers,
    status_line_bomb,
    chunked_framing_bomb("trailer"),
    chunked_framing_bomb("extension"),
    endless_body(chunked=False),
    endless_body(chunked=True),
    gzip_bomb,
    slow_drip,
    slow_header,
    slow_redirect_chain,
    slow_dns_redirect_chain,
    pipelined_junk_after_a_complete_answer,
    invalid_status_line,
    no_status_line,
    reset_mid_response,
    connection_refused,
    unknown_host,
    dns_never_answers,
    redirect_loop,
    redirect_to_a_private_address,
    tls_self_signed_is_refused,
    tls_with_a_trusted_test_ca,
    tls_to_a_plain_http_server,
    tls_handshake_never_completes,
]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> LoopbackCertificates:
    directory: Path = tmp_path_factory.mktemp("tls")
    return make_test_ca(directory)


async def run_case(case: Callable[[Harness], Awaitable[None]], certs: LoopbackCertificates) -> None:
    healthy = HostileServer(answer_ok)
    async with healthy as healthy_url:
        harness = Harness(healthy, healthy_url, certs)
        try:
            await case(harness)
            await harness.check_healthy_afterwards()
        finally:
            await harness.close()


@pytest.mark.parametrize("case", CASES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_hostile_receiver(
    case: Callable[[Harness], Awaitable[None]], loop: str, certs: LoopbackCertificates
) -> None:
    run: Any = uvloop.run if loop == "uvloop" else asyncio.run
    run(asyncio.wait_for(run_case(case, certs), 20))
