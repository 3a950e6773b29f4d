"""Real HTTP servers on loopback for tests: our ASGI apps under uvicorn, and receivers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from aiohttp import web


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def serve_asgi(app: Any, port: int | None = None) -> AsyncIterator[str]:
    """Run an ASGI app (lifespan included) under uvicorn on loopback; yield its base URL."""
    port = port or free_port()
    # proxy_headers=False as in production (click-gateway serve): the apps read
    # X-Forwarded-For themselves, only from TRUSTED_PROXIES.
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        loop="asyncio",
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 20
    while not server.started:
        if task.done():
            task.result()  # raise the start-up error
            raise RuntimeError("server stopped during start-up")
        if time.monotonic() > deadline:
            raise TimeoutError("server did not start")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


@dataclass
class ReceivedRequest:
    method: str
    path: str
    query: dict[str, str]
    raw_url: str  # path + query exactly as sent on the wire
    headers: dict[str, str]
    received_at: float


@dataclass
class Receiver:
    """A postback receiver: records every request; ``responder`` decides the answer."""

    base_url: str = ""
    requests: list[ReceivedRequest] = field(default_factory=list)
    responder: Callable[[ReceivedRequest], Any] | None = None

    def clear(self) -> None:
        self.requests.clear()

    def matching(self, path: str) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.path == path]


@asynccontextmanager
async def run_receiver() -> AsyncIterator[Receiver]:
    """An aiohttp server on loopback that answers 200 unless told otherwise.

    ``responder`` may return an ``aiohttp.web.Response``, an int status, or an
    awaitable of either (to simulate slow receivers).
    """
    receiver = Receiver()

    async def handle(request: web.Request) -> web.StreamResponse:
        record = ReceivedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            raw_url=request.raw_path,
            headers=dict(request.headers),
            received_at=time.time(),
        )
        receiver.requests.append(record)
        if receiver.responder is None:
            return web.Response(text="ok")
        answer = receiver.responder(record)
        if asyncio.iscoroutine(answer):
            answer = await answer
        if isinstance(answer, int):
            return web.Response(status=answer, text=f"status {answer}")
        assert isinstance(answer, web.StreamResponse)
        return answer

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    receiver.base_url = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        await runner.cleanup()
