"""The click-path ceiling: a raw ASGI callable that answers every request with a 302.

Served by the same server and settings as the gateway (uvicorn, uvloop, httptools,
one worker, no access log), it is what a Python click handler can at best reach.

    python -m uvicorn bench.raw_asgi:app --loop uvloop --http httptools --no-access-log
"""

from __future__ import annotations

from typing import Any

START = {
    "type": "http.response.start",
    "status": 302,
    "headers": [
        (b"location", b"https://advertiser.example/landing?click_id=1234567890123"),
        (b"cache-control", b"no-store"),
        (b"content-length", b"0"),
    ],
}
BODY = {"type": "http.response.body", "body": b""}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send(START)
    await send(BODY)
