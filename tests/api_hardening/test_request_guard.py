"""The guard on its own, around a tiny app on loopback: per-path caps and identity hand-off."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from postback_core.client_address import ClientAddressResolver
from postback_core.http_guard import (
    AUTHENTICATED,
    AuthFailureLimiter,
    ProtectedPrefix,
    RequestGuard,
)
from tests.support.servers import serve_asgi


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body; answers its length and who the guard said the caller is."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = orjson.dumps({"size": size, "who": scope.get("state", {}).get(AUTHENTICATED)})
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def known_key(scope: dict[str, Any]) -> object | None:
    headers = dict(scope["headers"])
    return "caller-7" if headers.get(b"x-api-key") == b"right" else None


def guarded() -> RequestGuard:
    return RequestGuard(
        echo,
        max_body_bytes=64 * 1024,
        protected=[ProtectedPrefix("/private", known_key, "key required", "X-Api-Key")],
        limiter=AuthFailureLimiter(3, 60),
        addresses=ClientAddressResolver([]),
        route_body_limits={"/bulk": 256 * 1024},
    )


async def test_a_path_can_have_its_own_body_cap() -> None:
    body = b"x" * (128 * 1024)
    async with serve_asgi(guarded()) as url, httpx.AsyncClient(base_url=url) as client:
        bulk = await client.post("/bulk", content=body)
        other = await client.post("/other", content=body)
    assert bulk.status_code == 200 and bulk.json()["size"] == len(body)
    assert other.status_code == 413
    assert other.json() == {"detail": "request body too large: at most 65536 bytes"}


async def test_the_endpoint_receives_who_the_guard_authenticated() -> None:
    async with serve_asgi(guarded()) as url, httpx.AsyncClient(base_url=url) as client:
        accepted = await client.post("/private/x", content=b"{}", headers={"X-Api-Key": "right"})
        refused = await client.post("/private/x", content=b"{}", headers={"X-Api-Key": "wrong"})
    assert accepted.status_code == 200
    assert accepted.json() == {"size": 2, "who": "caller-7"}
    assert refused.status_code == 401
    assert refused.json() == {"detail": "key required"}
    assert refused.headers["www-authenticate"] == "X-Api-Key"
