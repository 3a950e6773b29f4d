"""Limits both HTTP servers enforce before an endpoint sees a request.

* a body cap: a body larger than ``MAX_REQUEST_BODY_BYTES`` (or a route's own
  cap) is refused with 413 — up front from ``Content-Length``, or as soon as a
  streamed body passes the cap — and never parsed in full;
* authentication first: a request with a body to a protected prefix is
  authenticated before a byte of its body is read, so a stranger can't make
  us read (or parse) megabytes before the 401;
* failed-authentication limits per client address (the socket peer, or the
  forwarded address behind ``TRUSTED_PROXIES``): past the limit, every request
  to a protected prefix gets 429 with ``Retry-After`` until the window passes;
* a header timeout: a connection that does not finish a request's headers in
  time is closed (uvicorn only times out idle keep-alive connections).

Every refusal is the JSON error shape of :mod:`postback_core.web`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import HTTPException
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from postback_core.client_address import ClientAddressResolver
from postback_core.settings import HTTPServiceSettings

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]
# What an authenticator found: None = refused; anything else identifies the caller.
Authenticator = Callable[[Scope], Awaitable[object | None]]
# Where the guard leaves the authenticated identity for the endpoint (scope["state"]).
AUTHENTICATED = "authenticated"
MAX_TRACKED_CLIENTS = 100_000


@dataclass(frozen=True)
class ProtectedPrefix:
    """Requests under ``prefix`` need credentials that ``authenticate`` accepts."""

    prefix: str
    authenticate: Authenticator
    refusal: str  # the 401 detail, the same text the endpoint's own check gives
    challenge: str  # WWW-Authenticate


class AuthFailureLimiter:
    """Failed authentications per client address in a sliding window; bounded memory."""

    def __init__(self, limit: int, window_seconds: float) -> None:
        self.limit = limit
        self.window = window_seconds
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str, now: float) -> deque[float] | None:
        failures = self._failures.get(client)
        if failures is None:
            return None
        while failures and now - failures[0] >= self.window:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return None
        return failures

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None when it may now."""
        now = time.monotonic()
        failures = self._recent(client, now)
        if failures is None or len(failures) < self.limit:
            return None
        return max(0.0, self.window - (now - failures[0]))

    def record_failure(self, client: str) -> None:
        now = time.monotonic()
        failures = self._recent(client, now)
        if failures is None:
            if len(self._failures) >= MAX_TRACKED_CLIENTS:  # forget the oldest client
                self._failures.pop(next(iter(self._failures)))
            failures = self._failures[client] = deque(maxlen=self.limit)
        failures.append(now)


def _json_response_events(
    status: int, detail: str, headers: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    body = orjson.dumps({"detail": detail})
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # The body may be unread: don't let the client keep streaming it into this connection.
        (b"connection", b"close"),
    ]
    raw_headers += [(k.lower().encode(), v.encode("latin-1")) for k, v in (headers or {}).items()]
    return (
        {"type": "http.response.start", "status": status, "headers": raw_headers},
        {"type": "http.response.body", "body": body},
    )


def body_too_large(limit: int) -> HTTPException:
    return HTTPException(
        413, f"request body too large: at most {limit} bytes", headers={"Connection": "close"}
    )


class RequestGuard:
    """ASGI middleware applying the body cap, auth-first and failed-auth limits."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        protected: Sequence[ProtectedPrefix] = (),
        limiter: AuthFailureLimiter,
        addresses: ClientAddressResolver,
        route_body_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.protected = tuple(protected)
        self.limiter = limiter
        self.addresses = addresses
        # Exact paths allowed a different cap (e.g. a bulk endpoint).
        self.route_body_limits = dict(route_body_limits or {})

    @classmethod
    def for_settings(
        cls,
        app: ASGIApp,
        settings: HTTPServiceSettings,
        protected: Sequence[ProtectedPrefix],
        route_body_limits: Mapping[str, int] | None = None,
    ) -> RequestGuard:
        return cls(
            app,
            max_body_bytes=settings.max_request_body_bytes,
            protected=protected,
            limiter=AuthFailureLimiter(
                settings.auth_failure_limit, settings.auth_failure_window_seconds
            ),
            addresses=ClientAddressResolver(settings.trusted_proxies),
            route_body_limits=route_body_limits,
        )

    def _protection(self, path: str) -> ProtectedPrefix | None:
        for area in self.protected:
            if path == area.prefix or path.startswith(area.prefix + "/"):
                return area
        return None

    def client_address(self, scope: Scope) -> str:
        client = scope.get("client")
        forwarded: str | None = None
        for name, value in scope.get("headers", ()):
            if name == b"x-forwarded-for":
                text = value.decode("latin-1")
                forwarded = text if forwarded is None else f"{forwarded},{text}"
        resolved = self.addresses.resolve(client[0] if client else None, forwarded)
        return resolved or "unknown"

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.route_body_limits.get(scope["path"], self.max_body_bytes)
        declared_length: int | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared_length = int(value)
                except ValueError:
                    declared_length = None
            elif name == b"transfer-encoding":
                chunked = True
        if declared_length is not None and declared_length > limit:
            return await _send_all(send, *_json_response_events(413, body_too_large(limit).detail))

        area = self._protection(scope["path"])
        client = ""
        if area is not None:
            client = self.client_address(scope)
            wait = self.limiter.retry_after(client)
            if wait is not None:
                return await _send_all(
                    send,
                    *_json_response_events(
                        429,
                        "too many failed authentication attempts from your address;"
                        f" retry in {math.ceil(wait)} s",
                        {"Retry-After": str(max(1, math.ceil(wait)))},
                    ),
                )
            if chunked or (declared_length or 0) > 0:
                identity = await area.authenticate(scope)
                if identity is None:
                    self.limiter.record_failure(client)
                    return await _send_all(
                        send,
                        *_json_response_events(
                            401, area.refusal, {"WWW-Authenticate": area.challenge}
                        ),
                    )
                scope.setdefault("state", {})[AUTHENTICATED] = identity

        received = 0

        async def capped_receive() -> dict[str, Any]:
            nonlocal received
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise body_too_large(limit)
            return message

        response_started = False

        async def observed_send(message: dict[str, Any]) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                if area is not None and message["status"] == 401:
                    self.limiter.record_failure(client)
            await send(message)

        try:
            await self.app(scope, capped_receive, observed_send)
        except StarletteHTTPException as exc:  # raised outside FastAPI (a raw handler)
            if response_started or exc.status_code != 413:
                raise
            await _send_all(send, *_json_response_events(413, str(exc.detail)))


async def _send_all(send: Any, *messages: dict[str, Any]) -> None:
    for message in messages:
        await send(message)


# --- server timeouts ----------------------------------------------------------------------


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus a deadline for each request's headers.

    uvicorn closes idle keep-alive connections, but any byte cancels that
    timer, so a client trickling headers one byte a second holds a connection
    (and its memory) for ever. Here the clock starts when the connection
    opens (and again when a request's first byte arrives) and only complete
    headers stop it; an idle keep-alive connection is still uvicorn's to close.
    """

    # Set by each service's app factory from HTTP_HEADER_TIMEOUT_SECONDS (per process).
    header_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._reading_headers = False

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.transport is None or self.transport.is_closing():
            return
        if self._reading_headers:  # part of a request arrived: say why we hang up
            start, body = _json_response_events(408, "request headers not received in time")
            head = b"".join(k + b": " + v + b"\r\n" for k, v in start["headers"])
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\n" + head + b"\r\n" + body["body"]
            )
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        self._arm_header_deadline()

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._disarm_header_deadline()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)


def configure_header_timeout(settings: HTTPServiceSettings) -> None:
    """Apply HTTP_HEADER_TIMEOUT_SECONDS to this process's connections."""
    HeaderTimeoutProtocol.header_timeout = settings.http_header_timeout_seconds


def server_options(settings: HTTPServiceSettings) -> dict[str, Any]:
    """uvicorn options both services serve with: the guarded protocol and idle timeout."""
    return {
        "http": HeaderTimeoutProtocol,
        "timeout_keep_alive": settings.http_keep_alive_timeout_seconds,
        "server_header": False,
    }
