"""Hostile HTTP receivers for tests: raw asyncio TCP (or TLS) servers on loopback.

A ``HostileServer`` runs one ``behaviour`` coroutine per connection; the
behaviour reads the request and then misbehaves on purpose (a header that never
ends, a body that never ends, one byte a second, a reset mid-response...). The
server counts connections and the bytes it managed to write, so a test can tell
how early the client stopped reading. ``make_test_ca`` issues a throw-away CA and
a loopback server certificate with the ``openssl`` command-line tool.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

CHUNK = 64 << 10


class HostileServer:
    """``async with HostileServer(behaviour) as base_url``; behaviour(server, reader, writer)."""

    def __init__(
        self,
        behaviour: Callable[
            [HostileServer, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]
        ],
        *,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.behaviour = behaviour
        self.tls = tls
        self.connections = 0
        self.requests = 0
        self.bytes_written = 0
        self.client_went_away = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        port = self._server.sockets[0].getsockname()[1]
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        # The behaviour runs in a task of its own, so stopping the server can cancel it
        # while the stream's handler still ends normally.
        task = asyncio.ensure_future(self.behaviour(self, reader, writer))
        self._tasks.add(task)
        try:
            await task
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            self.client_went_away.set()
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.transport.abort()

    # -- building blocks for behaviours -------------------------------------------

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        return head

    async def send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()
        self.bytes_written += len(data)

    async def send_forever(self, writer: asyncio.StreamWriter, chunk: bytes) -> None:
        """Write ``chunk`` again and again until the client goes away."""
        while True:
            await self.send(writer, chunk)
            if writer.transport.is_closing():
                raise ConnectionResetError("client closed")

    async def drip(self, writer: asyncio.StreamWriter, data: bytes, every: float) -> None:
        """One byte every ``every`` seconds (a receiver that is slow on purpose)."""
        for index in range(len(data)):
            await self.send(writer, data[index : index + 1])
            await asyncio.sleep(every)

    @staticmethod
    def reset(writer: asyncio.StreamWriter) -> None:
        """Abort with a TCP RST (SO_LINGER 0), not a clean FIN."""
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()


async def answer_ok(
    server: HostileServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """A healthy keep-alive receiver: 200 "ok" to every request."""
    while True:
        await server.read_request(reader)
        await server.send(writer, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


@dataclass(frozen=True)
class LoopbackCertificates:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only the test CA."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def make_test_ca(directory: Path) -> LoopbackCertificates:
    """A CA and a certificate for 127.0.0.1/localhost signed by it (openssl CLI)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=postback test CA", "-keyout", "ca.key", "-out", "ca.pem",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr",
    )  # fmt: skip
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.pem",
    )  # fmt: skip
    return LoopbackCertificates(
        directory / "ca.pem", directory / "server.pem", directory / "server.key"
    )
