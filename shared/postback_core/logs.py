"""Logging set-up shared by both services: one line per event, UTC timestamps.

``LOG_FORMAT=json`` (the default outside ``ENV=dev``) writes one JSON object
per line for log shippers; dev gets readable text. Every line carries the
request id of the HTTP request it happened in and, where known, the conversion
id and event id (``contextvars``, so concurrent requests and deliveries never
mix them up). Configured secrets (admin token, session secret, passwords in
the database and broker URLs) are masked (``postback_core.security``) in every line, whatever
logged them.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import sys
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from postback_core.security import mask_in_text
from postback_core.settings import CommonSettings

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
conversion_id_var: ContextVar[int | None] = ContextVar("conversion_id", default=None)
event_id_var: ContextVar[str | None] = ContextVar("event_id", default=None)

REQUEST_ID_HEADER = b"x-request-id"
# An incoming id is kept only if it is short and plain (it ends up in every log line).
_REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# LogRecord attributes that are not caller-supplied ``extra`` fields (uvicorn adds
# ``color_message``, the same text with terminal colours).
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


def new_request_id() -> str:
    return secrets.token_hex(8)


def accepted_request_id(value: str | None) -> str:
    """The caller's X-Request-Id when it is safe to log, else a fresh one."""
    if value and _REQUEST_ID_PATTERN.match(value):
        return value
    return new_request_id()


@contextlib.contextmanager
def delivery_context(conversion_id: int | None, event_id: object | None) -> Iterator[None]:
    """Every line logged inside carries this conversion's and event's ids."""
    conversion_token = conversion_id_var.set(conversion_id)
    event_token = event_id_var.set(None if event_id is None else str(event_id))
    try:
        yield
    finally:
        event_id_var.reset(event_token)
        conversion_id_var.reset(conversion_token)


def url_password(url: str) -> str | None:
    """The password in a database or broker URL (to keep it out of logs)."""
    try:
        return urlsplit(url).password
    except ValueError:
        return None


class _Masking:
    def __init__(self, hidden: Iterable[str | None]) -> None:
        # Short values would mask ordinary words; real secrets are long.
        self.hidden = tuple(s for s in hidden if s and len(s) >= 6)

    def mask(self, text: str) -> str:
        return mask_in_text(text, *self.hidden) if self.hidden else text


def _context() -> dict[str, Any]:
    found: dict[str, Any] = {}
    request_id = request_id_var.get()
    if request_id is not None:
        found["request_id"] = request_id
    conversion_id = conversion_id_var.get()
    if conversion_id is not None:
        found["conversion_id"] = conversion_id
    event_id = event_id_var.get()
    if event_id is not None:
        found["event_id"] = event_id
    return found


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, context ids, extra fields."""

    def __init__(self, masking: _Masking) -> None:
        super().__init__()
        self._masking = masking

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_context(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        line = orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        return self._masking.mask(line)


class TextFormatter(logging.Formatter):
    """``2026-01-01T00:00:00.000Z INFO name: message [request_id=… conversion_id=…]``."""

    def __init__(self, masking: _Masking) -> None:
        super().__init__(
            "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
        )
        self.converter = time.gmtime
        self._masking = masking

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {
            **_context(),
            **{
                k: v
                for k, v in record.__dict__.items()
                if k not in _RECORD_ATTRS and not k.startswith("_")
            },
        }
        if fields:
            line += " [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]"
        return self._masking.mask(line)


def configure_logging(
    level: str = "INFO", *, json: bool = False, secrets_to_hide: Iterable[str | None] = ()
) -> None:
    handler = logging.StreamHandler(sys.stderr)
    masking = _Masking(secrets_to_hide)
    handler.setFormatter(JsonFormatter(masking) if json else TextFormatter(masking))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiormq/aio-pika are chatty about reconnects at INFO; keep warnings.
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)


def configure_logging_from(settings: CommonSettings) -> None:
    """Logging as the settings ask, hiding every secret they hold."""
    configure_logging(
        settings.log_level,
        json=settings.log_json,
        secrets_to_hide=(
            settings.admin_token,
            getattr(settings, "session_secret", None),
            url_password(settings.database_url),
            url_password(settings.amqp_url),
        ),
    )


access_log = logging.getLogger("postback_core.http")


class RequestIdMiddleware:
    """ASGI: one request id per HTTP request (the caller's X-Request-Id if plain), echoed back.

    With DEBUG logging, one line per request: method, path (never the query,
    which may hold an API key), status and duration.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or request_id_var.get() is not None:
            # Not HTTP, or an outer layer already gave this request its id.
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                incoming = value.decode("latin-1")
                break
        request_id = accepted_request_id(incoming)
        header = (REQUEST_ID_HEADER, request_id.encode())
        status = 0

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        # Not reset afterwards: Starlette runs the 500 handler (which logs the error)
        # outside every user middleware, and it must still see the id. The server
        # runs each request in a task of its own, whose context starts without one.
        request_id_var.set(request_id)
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if access_log.isEnabledFor(logging.DEBUG):
                access_log.debug(
                    "%s %s %d",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={"duration_ms": round((time.perf_counter() - started) * 1000, 2)},
                )
