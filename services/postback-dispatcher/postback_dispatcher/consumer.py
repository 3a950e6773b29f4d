"""Consume conversion events and deliver their postbacks.

Per message: decode → load the publisher's settings (short cache) → render →
claim an attempt in the database → host slot + breaker → send → follow-up.

Rules that keep it "never lost, never looping":
- the attempt is counted in the database *before* the request (the claim), so
  the attempt limit holds across crashes and redeliveries;
- the consumed message is acked only after its follow-up is done: the retry-tier
  or dead-letter publish confirmed by the broker, and the outcome written to the
  database (a success is acked right after "delivered" is committed — no
  broker publish on the success path);
- anything unexpected leaves the message unacked (nack with requeue after a
  pause); the quorum queue's delivery limit is the last backstop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import aio_pika
import asyncpg
import orjson
from aio_pika.abc import (
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aiormq.abc import DeliveredMessage

from postback_core.contracts import ContractError
from postback_core.db.base import asyncpg_dsn, keep_session_state
from postback_core.enums import ConversionStatus
from postback_core.topology import (
    DEAD_EXCHANGE,
    HEADER_ATTEMPT,
    HEADER_DEAD_REASON,
    HEADER_FIRST_ATTEMPT_AT,
    HEADER_HISTORY,
    HEADER_LAST_ERROR,
    HEADER_LAST_STATUS,
    HEADER_SEQUENCE,
    HEADER_TRIGGER,
    RETRY_EXCHANGE,
    declare_topology,
    retry_routing_key,
)
from postback_dispatcher import repository
from postback_dispatcher.archive import (
    HEADER_URL_MASKED,
    DeadLetterArchiver,
    header_int,
    header_text,
)
from postback_dispatcher.attempt_log import AttemptLogWriter
from postback_dispatcher.batching import AckBatcher, ClaimBatcher, Delivery
from postback_dispatcher.breaker import CircuitBreakers, HostLimiter
from postback_dispatcher.broker import ConfirmedPublisher
from postback_dispatcher.events import DispatchEvent, decode_event
from postback_dispatcher.rendering import compile_template
from postback_dispatcher.repository import (
    AttemptRecord,
    ClaimRequest,
    DeliveryOutcome,
    PostbackTarget,
)
from postback_dispatcher.sender import PostbackSender, SendResult
from postback_dispatcher.settings import DispatcherSettings
from postback_dispatcher.signing import signed_headers as postback_headers

log = logging.getLogger(__name__)

MAX_HISTORY_ENTRIES = 25
RETRYABLE_STATUSES = frozenset({408, 425, 429})
PERMANENT_ERRORS = {
    "SSRFBlocked": "ssrf_blocked",
    "InvalidURL": "invalid_url",
    "TooManyRedirects": "too_many_redirects",
}


def _now() -> datetime:
    return datetime.now(UTC)


def host_key(url: str) -> str:
    """``host[:port]`` of a URL, lower-cased: the unit of per-host fairness."""
    try:
        parts = urlsplit(url)
        return (parts.netloc or "").lower().rsplit("@", 1)[-1]
    except ValueError:
        return ""


@functools.lru_cache(maxsize=4096)
def _secret_forms(secret: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys((secret, quote(secret, safe=""), quote(secret, safe="-._~"))))


def mask_token(text: str, token: str | None) -> str:
    """``postback_core.security.mask_in_text`` for one token, with its forms cached."""
    if not token:
        return text
    for form in _secret_forms(token):
        text = text.replace(form, "***")
    return text


def classify(result: SendResult) -> tuple[str, str | None]:
    """("delivered" | "retry" | "dead", dead reason)."""
    if result.ok:
        return "delivered", None
    if result.error_class in PERMANENT_ERRORS:
        return "dead", PERMANENT_ERRORS[result.error_class]
    status = result.status
    if status is None or status >= 500 or status in RETRYABLE_STATUSES:
        return "retry", None
    if 400 <= status < 500:
        return "dead", "permanent_http_4xx"
    return "dead", "unexpected_status"


@dataclass
class Metrics:
    delivered: int = 0
    retried: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    duplicates_dropped: int = 0
    poison: int = 0
    breaker_open: int = 0
    errors: int = 0


class PostbackSettingsCache:
    """Publisher settings, read at send time and kept for a few seconds.

    Short enough that a fixed URL is picked up by a replay soon after the fix;
    concurrent misses for one publisher share a single query.
    """

    def __init__(self, pool: asyncpg.Pool, ttl_seconds: float) -> None:
        self._pool = pool
        self._ttl = ttl_seconds
        self._entries: dict[int, tuple[float, PostbackTarget | None]] = {}
        self._loading: dict[int, asyncio.Future[PostbackTarget | None]] = {}

    def cached(self, publisher_id: int) -> PostbackTarget | None:
        """The fresh cached value without a coroutine; LookupError: ``await get``."""
        entry = self._entries.get(publisher_id)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        raise LookupError(publisher_id)

    async def get(self, publisher_id: int) -> PostbackTarget | None:
        entry = self._entries.get(publisher_id)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        pending = self._loading.get(publisher_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[PostbackTarget | None] = asyncio.get_running_loop().create_future()
        self._loading[publisher_id] = future
        try:
            async with self._pool.acquire() as conn:
                target = await repository.load_postback_settings(conn, publisher_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved
            raise
        finally:
            self._loading.pop(publisher_id, None)
        if self._ttl > 0:
            self._entries[publisher_id] = (time.monotonic() + self._ttl, target)
        future.set_result(target)
        return target


class PostbackConsumer:
    def __init__(
        self,
        settings: DispatcherSettings,
        *,
        sender: PostbackSender,
        publisher: ConfirmedPublisher,
        name: str = "postback-dispatcher",
        archive_dead_letters: bool = True,
        consumer_priority: int = 0,
    ) -> None:
        self.settings = settings
        self.name = name
        # RabbitMQ consumer priority: the broker gives messages to the highest
        # priority consumer with free prefetch. With workers, the serving process
        # gets a higher one, so light traffic stays in one process (bigger batches,
        # less CPU and fewer commits) and the others take only the overflow.
        self.consumer_priority = consumer_priority
        # One process archives the dead-letter queue (the serving one, with workers).
        self.archive_dead_letters = archive_dead_letters
        self.sender = sender
        self.publisher = publisher
        self.delays = settings.postback_retry_delays
        self.max_attempts = 1 + len(self.delays)
        self.breakers = CircuitBreakers(
            settings.breaker_failure_threshold, settings.breaker_cooldown_seconds
        )
        self.limiter = HostLimiter(settings.per_host_concurrency)
        self.metrics = Metrics()
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._consumer_tag: str | None = None
        self._work_queue = ""
        self._pool: asyncpg.Pool | None = None
        self._log: AttemptLogWriter | None = None
        self._cache: PostbackSettingsCache | None = None
        self._archiver: DeadLetterArchiver | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._in_flight: set[tuple[int, int]] = set()
        self._acks = AckBatcher()
        self._claims: ClaimBatcher | None = None
        self._stopping = False

    # -- lifecycle -----------------------------------------------------------------

    @property
    def broker_connected(self) -> bool:
        return (
            self._connection is not None
            and not self._connection.is_closed
            and self._channel is not None
            and not self._channel.is_closed
        )

    async def start(self, *, consume: bool = True) -> None:
        """Connect and declare; with ``consume=False`` the caller calls ``consume`` later."""
        self._stopping = False
        self._pool = await asyncpg.create_pool(
            asyncpg_dsn(self.settings.database_url),
            min_size=1,
            max_size=self.settings.db_pool_size,
            # Nothing here sets session state: skip the reset round trip per release.
            reset=keep_session_state,
            # Named, so pg_stat_activity (and the benchmarks' CPU split) can tell it apart.
            server_settings={"application_name": self.name},
        )
        self._log = AttemptLogWriter(self._pool)
        self._log.start()
        self._claims = ClaimBatcher(self._pool, self.max_attempts)
        self._acks = AckBatcher()
        self._acks.start()
        self._cache = PostbackSettingsCache(self._pool, self.settings.settings_cache_seconds)
        self._connection = await aio_pika.connect_robust(
            self.settings.amqp_url, client_properties={"connection_name": self.name}
        )
        setup = await self._connection.channel()
        topology = await declare_topology(setup, self.delays)
        await setup.close()
        await self.publisher.attach(self._connection)
        if self.archive_dead_letters:
            self._archiver = DeadLetterArchiver(self._pool)
            await self._archiver.start(self._connection)
        self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=self.settings.concurrency)
        self._work_queue = topology.work_queue.name
        if consume:
            await self.consume()

    async def consume(self) -> None:
        """Start taking messages from the work queue."""
        assert self._channel is not None
        await self._subscribe()
        # After a reconnect the robust channel restores its QoS; we re-subscribe.
        self._channel.reopen_callbacks.add(self._resubscribe)
        log.info(
            "%s consuming: concurrency=%d per_host=%d retry_delays=%s max_attempts=%d",
            self.name,
            self.settings.concurrency,
            self.settings.per_host_concurrency,
            ",".join(f"{d:g}" for d in self.delays),
            self.max_attempts,
        )

    async def stop(self) -> None:
        """Stop consuming, let in-flight work finish within the grace period, then close.

        Whatever is still unacked when the connection closes returns to the queue.
        """
        self._stopping = True
        if self._channel is not None and self._consumer_tag is not None:
            with contextlib.suppress(Exception):
                raw = await self._channel.get_underlay_channel()
                await raw.basic_cancel(self._consumer_tag)
        self._consumer_tag = None
        if self._tasks:
            _done, pending = await asyncio.wait(
                set(self._tasks), timeout=self.settings.shutdown_grace_seconds
            )
            for task in pending:
                task.cancel()
            if pending:
                log.warning("stop: %d postbacks unfinished, left for redelivery", len(pending))
                await asyncio.wait(pending, timeout=5)
        await self._acks.close()
        if self._archiver is not None:
            await self._archiver.stop()
        if self._log is not None:
            await self._log.close()
        await self.publisher.detach()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _subscribe(self) -> None:
        assert self._channel is not None
        raw = await self._channel.get_underlay_channel()
        ok = await raw.basic_consume(
            self._work_queue,
            self._on_delivery,
            arguments={"x-priority": self.consumer_priority},
        )
        self._consumer_tag = ok.consumer_tag

    async def _resubscribe(self, *_args: Any) -> None:
        if not self._stopping:
            await self._subscribe()
            log.info("re-subscribed to %s after a reconnect", self._work_queue)

    # -- per message ---------------------------------------------------------------

    async def _on_delivery(self, raw: DeliveredMessage) -> None:
        # aiormq runs each delivery in its own task (one function, not a chain of
        # coroutines: this runs thousands of times a second).
        if self._stopping:
            return  # arrived after the cancel: left unacked, it returns to the queue on close
        message = Delivery(raw)
        self._acks.received(message)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # tracked for the stop
        try:
            await self._process(message)
        except asyncio.CancelledError:
            raise  # stop: unacked, so the broker redelivers it
        except Exception:
            self.metrics.errors += 1
            log.exception("postback handling failed; the message returns to the queue")
            with contextlib.suppress(Exception):
                await asyncio.sleep(1.0)
                await message.nack(requeue=True)
                self._acks.settled(message)
        finally:
            self._tasks.discard(task)

    async def _process(self, message: Delivery) -> None:
        assert self._pool is not None and self._cache is not None and self._log is not None
        headers: Mapping[str, Any] = message.headers or {}
        try:
            event = decode_event(message.body)
        except ContractError as exc:
            self.metrics.poison += 1
            log.warning("poison message dead-lettered: %s", exc.reason[:200])
            history = {"reason": "poison", "last_error": exc.reason, "attempts": []}
            await self._publish_dead(message, headers, "poison", history, url_masked=None)
            self._acks.ack(message)
            return
        if event.status != ConversionStatus.APPROVED:
            # Until postbacks are routed per status, only approved conversions fire one.
            self._acks.ack(message)
            return

        sequence = header_int(headers, HEADER_SEQUENCE)
        key = (event.conversion_id, sequence)
        if key in self._in_flight:
            # A copy of a message this process is working on right now (e.g. the
            # gateway published it twice): the first copy owns the follow-up.
            self.metrics.duplicates_dropped += 1
            log.info("conversion %s: duplicate of an in-flight copy acked", event.conversion_id)
            self._acks.ack(message)
            return
        self._in_flight.add(key)
        try:
            await self._deliver(message, headers, event, sequence)
        finally:
            self._in_flight.discard(key)

    async def _deliver(
        self,
        message: Delivery,
        headers: Mapping[str, Any],
        event: DispatchEvent,
        sequence: int,
    ) -> None:
        assert self._cache is not None and self._log is not None and self._claims is not None
        trigger = header_text(headers, HEADER_TRIGGER) or "first"
        try:
            target = self._cache.cached(event.publisher_id)
        except LookupError:
            target = await self._cache.get(event.publisher_id)
        if target is None:
            await self._skip(message, event, sequence, trigger, headers)
            return

        token = target.security_token
        compiled = compile_template(target.url_template)
        url = compiled.render(event, token)
        url_masked = mask_token(url, token)

        claim = await self._claims.claim(
            ClaimRequest(event.conversion_id, event.event_id, event.publisher_id, sequence)
        )
        if claim.kind in ("stale", "delivered", "dead"):
            self.metrics.duplicates_dropped += 1
            log.info(
                "conversion %s: %s copy (sequence %d) acked without sending",
                event.conversion_id,
                claim.kind,
                sequence,
            )
            self._acks.ack(message)
            return
        if claim.kind == "limit":
            history = self._history_from(headers)
            # A redelivery after the last attempt was already made (crash in between).
            history["reason"] = "exhausted"
            await self._publish_dead(message, headers, "exhausted", history, url_masked)
            await self._log.write(
                None,
                DeliveryOutcome(
                    event.conversion_id,
                    sequence,
                    "dead",
                    history.get("last_status"),
                    history.get("last_error"),
                ),
            )
            self.metrics.dead_lettered += 1
            self._acks.ack(message)
            return

        attempt_no = claim.attempt_no
        attempt_trigger = trigger if attempt_no == 1 or trigger == "replay" else "retry"
        if attempt_no > 1 and trigger == "replay" and header_int(headers, HEADER_ATTEMPT) > 0:
            attempt_trigger = "retry"
        host = compiled.host or host_key(url)
        started_at = _now()
        await self.limiter.acquire(host)
        try:
            if self.breakers.allow(host):
                event_id = str(event.event_id)
                headers_for = functools.partial(postback_headers, event_id, token)
                result = await self.sender.send(
                    url, postback_headers(event_id, token, url), headers_for=headers_for
                )
                verdict, reason = classify(result)
                self.breakers.record(host, failed=verdict == "retry")
                outcome_name = verdict
            else:
                self.metrics.breaker_open += 1
                log.info(
                    "circuit open for %s: conversion %s moves to its next tier without a request",
                    host,
                    event.conversion_id,
                )
                result = SendResult(None, 0.0, None, "BreakerOpen", "circuit open", None, url)
                verdict, reason = "retry", None
                outcome_name = "breaker_open"
        finally:
            self.limiter.release(host)

        error_text = self._error_text(result, token)
        if verdict == "retry" and attempt_no >= self.max_attempts:
            verdict, reason = "dead", "exhausted"
        if verdict == "dead" and outcome_name != "breaker_open":
            outcome_name = "dead"
        record = AttemptRecord(
            conversion_id=event.conversion_id,
            event_id=event.event_id,
            publisher_id=event.publisher_id,
            sequence=sequence,
            attempt_no=attempt_no,
            trigger=attempt_trigger,
            outcome=outcome_name,
            url_masked=url_masked
            if result.final_url == url
            else mask_token(result.final_url, token),
            http_status=result.status,
            duration_ms=result.duration_ms,
            error_class=result.error_class,
            error_message=mask_token(result.error_message, token) if result.error_message else None,
            response_excerpt=result.response_excerpt,
            created_at=started_at,
        )

        if verdict == "delivered":
            await self._log.write(
                record,
                DeliveryOutcome(event.conversion_id, sequence, "delivered", result.status, None),
            )
            self.metrics.delivered += 1
            self._acks.ack(message)
            return

        history = self._history_from(headers)
        entry = {
            "attempt": attempt_no,
            "at": started_at.isoformat(),
            "trigger": attempt_trigger,
            "outcome": outcome_name,
            "status": result.status,
            "duration_ms": result.duration_ms,
            "error_class": result.error_class,
            "error": error_text,
        }
        history.setdefault("attempts", []).append(entry)
        history["attempts"] = history["attempts"][-MAX_HISTORY_ENTRIES:]
        first_at = claim.first_attempt_at or started_at
        history["first_attempt_at"] = history.get("first_attempt_at") or first_at.isoformat()
        history["last_attempt_at"] = started_at.isoformat()
        history["last_status"] = result.status
        history["last_error_class"] = result.error_class
        history["last_error"] = error_text

        if verdict == "retry":
            delay = self._retry_delay(attempt_no, result.retry_after)
            retry_headers = self._carry_headers(headers, history)
            retry_headers[HEADER_ATTEMPT] = attempt_no
            retry_headers[HEADER_TRIGGER] = "retry"
            retry_headers[HEADER_SEQUENCE] = sequence
            await self.publisher.publish(
                RETRY_EXCHANGE,
                retry_routing_key(delay),
                message.body,
                retry_headers,
                message_id=str(event.event_id),
            )
            await self._log.write(
                record,
                DeliveryOutcome(
                    event.conversion_id, sequence, "pending", result.status, error_text
                ),
            )
            self.metrics.retried += 1
            self._acks.ack(message)
            return

        dead_reason = reason or "exhausted"
        history["reason"] = dead_reason
        log.warning(
            "conversion %s dead-lettered after %d attempt(s): %s (%s)",
            event.conversion_id,
            attempt_no,
            dead_reason,
            result.error_class,
        )
        await self._publish_dead(message, headers, dead_reason, history, url_masked, attempt_no)
        await self._log.write(
            record,
            DeliveryOutcome(event.conversion_id, sequence, "dead", result.status, error_text),
        )
        self.metrics.dead_lettered += 1
        self._acks.ack(message)

    # -- helpers -------------------------------------------------------------------

    @staticmethod
    def _error_text(result: SendResult, token: str | None) -> str | None:
        """``Class: message`` with the token masked (messages may quote the URL)."""
        if result.error_class is None:
            return None
        if result.error_message:
            return mask_token(f"{result.error_class}: {result.error_message}", token)[:1000]
        return result.error_class

    def _retry_delay(self, attempt_no: int, retry_after: float | None) -> float:
        """The tier after attempt ``attempt_no``; Retry-After picks a later tier, capped."""
        delay = self.delays[min(attempt_no - 1, len(self.delays) - 1)]
        if retry_after is not None and retry_after > delay:
            later = sorted(d for d in self.delays if d >= retry_after)
            delay = later[0] if later else max(self.delays)
        return delay

    @staticmethod
    def _history_from(headers: Mapping[str, Any]) -> dict[str, Any]:
        raw = header_text(headers, HEADER_HISTORY)
        if raw:
            try:
                loaded = orjson.loads(raw)
                if isinstance(loaded, dict):
                    return loaded
            except orjson.JSONDecodeError:
                pass
        return {"attempts": []}

    @staticmethod
    def _carry_headers(headers: Mapping[str, Any], history: dict[str, Any]) -> dict[str, Any]:
        carried: dict[str, Any] = {k: v for k, v in headers.items() if k.startswith("x-postback-")}
        carried[HEADER_HISTORY] = orjson.dumps(history).decode()
        if history.get("first_attempt_at"):
            carried[HEADER_FIRST_ATTEMPT_AT] = history["first_attempt_at"]
        if history.get("last_status") is not None:
            carried[HEADER_LAST_STATUS] = history["last_status"]
        else:
            carried.pop(HEADER_LAST_STATUS, None)
        if history.get("last_error"):
            carried[HEADER_LAST_ERROR] = str(history["last_error"])[:500]
        return carried

    async def _publish_dead(
        self,
        message: Delivery,
        headers: Mapping[str, Any],
        reason: str,
        history: dict[str, Any],
        url_masked: str | None,
        attempt_no: int | None = None,
    ) -> None:
        dead_headers = self._carry_headers(headers, history)
        dead_headers[HEADER_DEAD_REASON] = reason
        if attempt_no is not None:
            dead_headers[HEADER_ATTEMPT] = attempt_no
        if url_masked:
            dead_headers[HEADER_URL_MASKED] = url_masked
        await self.publisher.publish(DEAD_EXCHANGE, "", message.body, dead_headers)

    async def _skip(
        self,
        message: Delivery,
        event: DispatchEvent,
        sequence: int,
        trigger: str,
        headers: Mapping[str, Any],
    ) -> None:
        assert self._pool is not None and self._log is not None
        async with self._pool.acquire() as conn:
            await repository.mark_skipped(
                conn,
                conversion_id=event.conversion_id,
                event_id=event.event_id,
                publisher_id=event.publisher_id,
                sequence=sequence,
            )
        await self._log.write(
            AttemptRecord(
                conversion_id=event.conversion_id,
                event_id=event.event_id,
                publisher_id=event.publisher_id,
                sequence=sequence,
                attempt_no=header_int(headers, HEADER_ATTEMPT) + 1,
                trigger=trigger if trigger in ("first", "retry", "replay") else "first",
                outcome="skipped",
                url_masked=None,
                http_status=None,
                duration_ms=None,
                error_class=None,
                error_message="publisher has no postback URL",
                response_excerpt=None,
                created_at=_now(),
            ),
            None,
        )
        self.metrics.skipped += 1
        self._acks.ack(message)

    def snapshot(self) -> dict[str, Any]:
        """Counters for /metrics and /readyz."""
        return {
            **self.metrics.__dict__,
            "in_flight": len(self._tasks),
            "breaker_opened_total": self.breakers.opened_total,
            "breaker_short_circuited_total": self.breakers.short_circuited_total,
            "breaker_open_hosts": self.breakers.open_hosts(),
            "dead_letters_archived": self._archiver.archived_total if self._archiver else 0,
        }
