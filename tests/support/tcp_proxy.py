"""A switchable TCP proxy on loopback: simulate a broker (or anything) going away.

``TcpProxy`` forwards connections to a target (RabbitMQ at 127.0.0.1:5672 by
default). ``refuse()`` cuts every open connection and from then on closes new
ones at once, as a dead broker would look to a client; ``allow()`` lets
traffic through again. The listening port never changes, so clients keep
their configured URL throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class TcpProxy:
    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 5672) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.accepting = True
        self.connections_made = 0
        self.connections_refused = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._cut_all()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    def refuse(self) -> None:
        """Drop every open connection and close new ones on arrival."""
        self.accepting = False
        self._cut_all()

    def allow(self) -> None:
        self.accepting = True

    def amqp_url(self, vhost_path: str = "/", user: str = "guest", password: str = "guest") -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}{vhost_path}"

    def _cut_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        if not self.accepting:
            self.connections_refused += 1
            client.transport.abort()
            return
        try:
            upstream_reader, upstream = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            client.transport.abort()
            return
        self.connections_made += 1
        self._writers.update((client, upstream))
        pumps = [
            asyncio.create_task(self._pump(client_reader, upstream)),
            asyncio.create_task(self._pump(upstream_reader, client)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
                self._tasks.discard(task)
            for writer in (client, upstream):
                self._writers.discard(writer)
                writer.transport.abort()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()


@asynccontextmanager
async def run_tcp_proxy(
    target_host: str = "127.0.0.1", target_port: int = 5672
) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(target_host, target_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
