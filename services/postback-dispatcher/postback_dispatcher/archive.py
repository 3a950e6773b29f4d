"""Archive the dead-letter queue into the ``dead_letters`` table.

Everything that reaches ``postback.dead-letters`` is stored, including messages
the broker dead-lettered itself (quorum delivery limit) and unreadable ones, so
operators can query, fix and replay. Archiving is idempotent per event and
replay generation (see ``repository.upsert_dead_letter``).

The archiver stores whatever it receives and never loops on a message: every
value is made to fit its column (NUL-free bounded text, integers in range, the
body cut to ``MAX_STORED_BODY_BYTES``); a row the database still refuses is
stored in a reduced form (body, reason, the error), and one that can't be
stored even so is logged and acked. Only a database that is away is waited for
(the message stays unacked meanwhile), never a bad row.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aiormq.abc import DeliveredMessage

from postback_core.contracts import MAX_EVENT_BYTES, ContractError, decode_conversion_event
from postback_core.enums import DeadLetterReason
from postback_core.topology import (
    DEAD_LETTER_QUEUE,
    HEADER_ATTEMPT,
    HEADER_BODY_SHA256,
    HEADER_DEAD_REASON,
    HEADER_HISTORY,
    HEADER_SEQUENCE,
)
from postback_dispatcher import repository
from postback_dispatcher.broker import Subscription
from postback_dispatcher.repository import DATA_ERRORS, DeadLetterRecord

log = logging.getLogger(__name__)

HEADER_URL_MASKED = "x-postback-url-masked"
MAX_STORED_BODY_BYTES = MAX_EVENT_BYTES
MAX_STORED_TEXT_CHARS = 2000
MAX_INT32 = 2**31 - 1
_KNOWN_REASONS = frozenset(DeadLetterReason)
# A database that is away is waited for, in place (backoff capped at this).
_UNAVAILABLE_BACKOFF_MAX_SECONDS = 5.0


def header_text(headers: Mapping[str, Any], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "replace")
    return str(value)


def header_int(headers: Mapping[str, Any], name: str, default: int = 0) -> int:
    value = header_text(headers, name)
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _when(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _stored_text(value: object) -> str | None:
    """Text a PostgreSQL text column takes: no NUL, bounded."""
    if value is None:
        return None
    return str(value)[:MAX_STORED_TEXT_CHARS].replace("\x00", "\ufffd")


def _int32(value: object, default: int | None = None) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT32:
        return value
    return default


def _history_json(history: Mapping[str, Any]) -> str:
    # jsonb refuses the escaped NUL (\u0000) that orjson writes for a NUL.
    return orjson.dumps(history, default=str).decode().replace("\\u0000", "\\ufffd")


def _reason(headers: Mapping[str, Any], history: dict[str, Any]) -> str:
    """One of ``DeadLetterReason``: ours from the header, else the broker's, else unknown."""
    reason = header_text(headers, HEADER_DEAD_REASON)
    if reason is not None:
        if reason in _KNOWN_REASONS:
            return reason
        history.setdefault("reason_header", reason[:200])
        return DeadLetterReason.UNKNOWN
    broker_reason = header_text(headers, "x-first-death-reason")
    if broker_reason is None:
        found: str = DeadLetterReason.UNKNOWN
    elif broker_reason == "delivery_limit":
        found = DeadLetterReason.DELIVERY_LIMIT
    else:
        found = DeadLetterReason.BROKER_REJECTED
        history.setdefault("broker_reason", broker_reason[:200])
    history.setdefault("reason", found)
    return found


def _body_key(body: bytes, headers: Mapping[str, Any]) -> str:
    """The key of an unreadable message: the hash of its (original, full) body."""
    original = header_text(headers, HEADER_BODY_SHA256)  # an oversized body's excerpt
    if original is not None and len(original) == 64 and original.isalnum():
        return "sha256:" + original.lower()
    return "sha256:" + hashlib.sha256(body).hexdigest()


def dead_letter_record(body: bytes, headers: Mapping[str, Any]) -> DeadLetterRecord:
    """Build the table row from a dead-lettered message (any message, even unreadable).

    Every value is made to fit its column, so the row can always be stored.
    """
    history: dict[str, Any] = {}
    raw_history = header_text(headers, HEADER_HISTORY)
    if raw_history:
        try:
            loaded = orjson.loads(raw_history)
            if isinstance(loaded, dict):
                history = loaded
        except orjson.JSONDecodeError:
            history = {"unreadable_history": raw_history[:500]}
    reason = _reason(headers, history)
    attempts = history.get("attempts")
    attempt_count = len(attempts) if isinstance(attempts, list) else 0
    attempt_count = max(attempt_count, header_int(headers, HEADER_ATTEMPT))
    if len(body) > MAX_STORED_BODY_BYTES:
        history.setdefault("body_bytes", len(body))
    common: dict[str, Any] = {
        "sequence": _int32(header_int(headers, HEADER_SEQUENCE), 0),
        "url_masked": _stored_text(header_text(headers, HEADER_URL_MASKED)),
        "attempts": _int32(attempt_count, 0),
        "last_status": _int32(history.get("last_status")),
        "last_error": _stored_text(history.get("last_error")),
        "reason": reason,
        "first_attempt_at": _when(history.get("first_attempt_at")),
        "last_attempt_at": _when(history.get("last_attempt_at")),
        "payload": body[:MAX_STORED_BODY_BYTES],
        "history_json": _history_json(history),
    }
    try:
        event = decode_conversion_event(body)
    except ContractError:
        return DeadLetterRecord(
            event_key=_body_key(body, headers),
            event_id=None,
            conversion_id=None,
            click_id=None,
            publisher_id=None,
            offer_id=None,
            payout=None,
            **common,
        )
    return DeadLetterRecord(
        event_key=str(event.event_id),
        event_id=event.event_id,
        conversion_id=event.conversion_id,
        click_id=event.click_id,
        publisher_id=event.publisher_id,
        offer_id=event.offer_id,
        payout=event.payout,
        **common,
    )


def reduced_record(
    body: bytes, headers: Mapping[str, Any], error: BaseException
) -> DeadLetterRecord:
    """The row for a message whose full row the database refused: body, reason, the error."""
    history = {"archive_error": f"{type(error).__name__}: {error}"[:500]}
    reason = _reason(headers, history)
    return DeadLetterRecord(
        event_key=_body_key(body, headers),
        event_id=None,
        sequence=0,
        conversion_id=None,
        click_id=None,
        publisher_id=None,
        offer_id=None,
        payout=None,
        url_masked=None,
        attempts=0,
        last_status=None,
        last_error=_stored_text(history["archive_error"]),
        reason=reason,
        first_attempt_at=None,
        last_attempt_at=None,
        payload=body[:MAX_STORED_BODY_BYTES],
        history_json=_history_json(history),
    )


class DeadLetterArchiver:
    def __init__(self, pool: asyncpg.Pool, *, prefetch: int = 32) -> None:
        self._pool = pool
        self._prefetch = prefetch
        self._channel: AbstractRobustChannel | None = None
        self._subscription: Subscription | None = None
        self._stopping = False
        self.archived_total = 0
        self.unstorable_total = 0

    async def start(self, connection: AbstractRobustConnection) -> None:
        self._stopping = False
        channel = await connection.channel()
        assert isinstance(channel, AbstractRobustChannel)
        self._channel = channel
        await channel.set_qos(prefetch_count=self._prefetch)
        self._subscription = Subscription(channel, DEAD_LETTER_QUEUE, self._on_message)
        await self._subscription.start()

    async def _on_message(self, message: DeliveredMessage) -> None:
        body = message.body
        headers: Mapping[str, Any] = message.header.properties.headers or {}
        try:
            record = dead_letter_record(body, headers)
        except Exception as exc:  # a bug must not keep a message in the queue for ever
            log.exception("dead letter: could not read it; storing it reduced")
            record = reduced_record(body, headers, exc)
        stored = await self._store(record)
        if not stored and not self._stopping:
            try:
                record = reduced_record(body, headers, stored.error or RuntimeError())
            except Exception as exc:
                record = reduced_record(body, {}, exc)
            stored = await self._store(record)
        if self._stopping and stored.unavailable:
            return  # unacked: it returns to the queue when the channel closes
        if not stored:
            self.unstorable_total += 1
            log.error(
                "dead letter %s (reason=%s, %d bytes) could not be stored (%s); acked, not"
                " requeued, so it can't loop; its body starts %r",
                record.event_key,
                record.reason,
                len(body),
                stored.error,
                body[:200],
            )
        else:
            self.archived_total += 1
            log.info(
                "archived dead letter %s reason=%s attempts=%d",
                record.event_key,
                record.reason,
                record.attempts,
            )
        tag = getattr(message.delivery, "delivery_tag", None)
        if tag is not None and not message.channel.is_closed:
            with contextlib.suppress(Exception):  # closed meanwhile: redelivered, upsert no-op
                await message.channel.basic_ack(tag)

    async def _store(self, record: DeadLetterRecord) -> _Stored:
        """Upsert; a database that is away is retried in place (never a bad row)."""
        delay = 0.2
        while True:
            try:
                async with self._pool.acquire() as conn:
                    await repository.upsert_dead_letter(conn, record)
                return _Stored(None, unavailable=False)
            except DATA_ERRORS as exc:
                return _Stored(exc, unavailable=False)
            except Exception as exc:
                if self._stopping:
                    return _Stored(exc, unavailable=True)
                log.warning("dead letter archive: database unavailable (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _UNAVAILABLE_BACKOFF_MAX_SECONDS)

    async def stop(self) -> None:
        self._stopping = True
        if self._subscription is not None:
            await self._subscription.cancel()
            self._subscription = None
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            await channel.close()


class _Stored:
    """The result of one store: truthy when stored."""

    __slots__ = ("error", "unavailable")

    def __init__(self, error: BaseException | None, *, unavailable: bool) -> None:
        self.error = error
        self.unavailable = unavailable

    def __bool__(self) -> bool:
        return self.error is None
