"""Archive the dead-letter queue into the ``dead_letters`` table.

Everything that reaches ``postback.dead-letters`` is stored, including messages
the broker dead-lettered itself (quorum delivery limit) and unreadable ones, so
operators can query, fix and replay. Archiving is idempotent per event and
replay generation (see ``repository.upsert_dead_letter``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from postback_core.contracts import ContractError, decode_conversion_event
from postback_core.topology import (
    DEAD_LETTER_QUEUE,
    HEADER_ATTEMPT,
    HEADER_DEAD_REASON,
    HEADER_HISTORY,
    HEADER_SEQUENCE,
)
from postback_dispatcher import repository
from postback_dispatcher.repository import DeadLetterRecord

log = logging.getLogger(__name__)

HEADER_URL_MASKED = "x-postback-url-masked"


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


def dead_letter_record(body: bytes, headers: Mapping[str, Any]) -> DeadLetterRecord:
    """Build the table row from a dead-lettered message (any message, even unreadable)."""
    history: dict[str, Any] = {}
    raw_history = header_text(headers, HEADER_HISTORY)
    if raw_history:
        try:
            loaded = orjson.loads(raw_history)
            if isinstance(loaded, dict):
                history = loaded
        except orjson.JSONDecodeError:
            history = {"unreadable_history": raw_history[:500]}
    reason = header_text(headers, HEADER_DEAD_REASON)
    if reason is None:
        broker_reason = header_text(headers, "x-first-death-reason")
        reason = (
            "delivery_limit" if broker_reason == "delivery_limit" else (broker_reason or "unknown")
        )
        history.setdefault("reason", reason)
    attempts = history.get("attempts")
    attempt_count = len(attempts) if isinstance(attempts, list) else 0
    attempt_count = max(attempt_count, header_int(headers, HEADER_ATTEMPT))
    sequence = header_int(headers, HEADER_SEQUENCE)
    last_status = history.get("last_status")
    common: dict[str, Any] = {
        "sequence": sequence,
        "url_masked": header_text(headers, HEADER_URL_MASKED),
        "attempts": attempt_count,
        "last_status": last_status if isinstance(last_status, int) else None,
        "last_error": history.get("last_error"),
        "reason": reason,
        "first_attempt_at": _when(history.get("first_attempt_at")),
        "last_attempt_at": _when(history.get("last_attempt_at")),
        "payload": body,
        "history_json": orjson.dumps(history).decode(),
    }
    try:
        event = decode_conversion_event(body)
    except ContractError:
        return DeadLetterRecord(
            event_key="sha256:" + hashlib.sha256(body).hexdigest(),
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


class DeadLetterArchiver:
    def __init__(self, pool: asyncpg.Pool, *, prefetch: int = 32) -> None:
        self._pool = pool
        self._prefetch = prefetch
        self._channel: AbstractChannel | None = None
        self.archived_total = 0

    async def start(self, connection: AbstractRobustConnection) -> None:
        self._channel = await connection.channel()
        await self._channel.set_qos(prefetch_count=self._prefetch)
        queue = await self._channel.get_queue(DEAD_LETTER_QUEUE, ensure=False)
        await queue.consume(self._on_message)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            record = dead_letter_record(message.body, message.headers or {})
            async with self._pool.acquire() as conn:
                await repository.upsert_dead_letter(conn, record)
        except Exception:
            log.exception("could not archive a dead letter; it stays in the queue")
            await asyncio.sleep(1.0)
            await message.nack(requeue=True)
            return
        await message.ack()
        self.archived_total += 1
        log.info(
            "archived dead letter %s reason=%s attempts=%d",
            record.event_key,
            record.reason,
            record.attempts,
        )

    async def stop(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            await channel.close()
