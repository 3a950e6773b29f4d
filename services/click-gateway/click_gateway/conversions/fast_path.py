"""``POST /api/v1/conversions`` without FastAPI's per-request machinery.

Advertisers report conversions in bursts (a tracker flushing its queue), and
each request used to spend most of its CPU in routing, dependency solving and
middleware. This raw-ASGI handler serves the common case — a JSON body that
validates, a known API key from an allowed address — with the same models, the
same recorder and the same response bodies. Anything else (a missing or unknown
key, an address outside the advertiser's allowed_ips, the admin token, a body
that does not validate, an unusual content type, a huge body) is replayed into the
FastAPI route, which stays the single definition of the endpoint's errors and
of its OpenAPI schema. It runs behind the request guard (``app.py``), which
caps the body and checks the API key before any of the body is read.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import ValidationError

from click_gateway.advertisers.service import AdvertiserKeyCache
from click_gateway.clicks.service import ClickService
from click_gateway.conversions.counting import counted
from click_gateway.conversions.schemas import ConversionCreate
from click_gateway.conversions.service import ConversionRecorder, ConversionRefused

log = logging.getLogger(__name__)

PATH = "/api/v1/conversions"
# Bodies are a few dozen bytes; anything larger is left to the FastAPI route.
MAX_FAST_BODY = 16 * 1024

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def _json_headers(length: int) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", str(length).encode())]


class ConversionFastPath:
    def __init__(
        self,
        fallback: ASGIApp,
        recorder: ConversionRecorder,
        keys: AdvertiserKeyCache,
        clicks: ClickService,
    ) -> None:
        self.fallback = fallback
        self.recorder = recorder
        self.keys = keys
        self.clicks = clicks

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        api_key: str | None = None
        json_body = False
        forwarded_for: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                api_key = value.decode("latin-1")
            elif name == b"content-type":
                json_body = value.split(b";", 1)[0].strip().lower() == b"application/json"
            elif name == b"x-forwarded-for":
                forwarded_for = value
        body, complete = await _read_body(receive, MAX_FAST_BODY)
        if not complete or api_key is None or not json_body:
            return await self._replay(scope, body, complete, receive, send)
        try:
            data = ConversionCreate.model_validate_json(body)
        except ValidationError:
            return await self._replay(scope, body, complete, receive, send)
        try:
            # The guard has authenticated the key; the lookup (a cache hit) also brings
            # the advertiser's allowed networks.
            key = await self.keys.lookup(self.recorder.pool, api_key)
            if key is None or (
                key.allowed_networks is not None
                and not key.allows(self._client_address(scope, forwarded_for))
            ):
                return await self._replay(scope, body, complete, receive, send)
            result = await counted(
                self.recorder.record(
                    self.clicks,
                    advertiser_id=key.advertiser_id,
                    click_id=data.click_id,
                    payout=data.payout,
                    txid=data.txid,
                    goal=data.goal,
                    amount=data.amount,
                )
            )
        except ConversionRefused as exc:
            await _respond(send, exc.status_code, orjson.dumps({"detail": exc.detail}))
            return
        except Exception:
            log.exception("unhandled error on POST %s", PATH)
            await _respond(send, 500, b'{"detail":"internal error"}')
            return
        await _respond(
            send, 201 if result.created else 200, result.conversion.model_dump_json().encode()
        )

    def _client_address(self, scope: dict[str, Any], forwarded_for: bytes | None) -> str | None:
        client = scope.get("client")
        peer = client[0] if client else None
        return self.clicks.addresses.resolve(
            peer, forwarded_for.decode("latin-1") if forwarded_for is not None else None
        )

    async def _replay(
        self, scope: dict[str, Any], body: bytes, complete: bool, receive: Any, send: Any
    ) -> None:
        """Hand the request to FastAPI as if nothing had been read."""
        replayed = False

        async def replay_receive() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": not complete}
            message: dict[str, Any] = await receive()
            return message

        await self.fallback(scope, replay_receive, send)


async def _read_body(receive: Any, limit: int) -> tuple[bytes, bool]:
    """The body up to ``limit`` bytes; False when more is still unread."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # client went away
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True
        if size > limit:
            return b"".join(chunks), False


async def _respond(send: Any, status: int, body: bytes) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": _json_headers(len(body))}
    )
    await send({"type": "http.response.body", "body": body})
