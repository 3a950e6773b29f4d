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
- a message that is not a valid event (or too big) goes to the dead-letter
  queue at once, never near SQL or the retry tiers;
- a database that is away is waited for in place before the send, and the
  outcome write after it is retried until it is durable (attempt_log): the
  message stays unacked meanwhile, never acked with its state unwritten;
- a paused target (breaker) defers the message to a retry tier without using an
  attempt;
- anything unexpected leaves the message unacked (nack with requeue after a
  pause); the quorum queue's delivery limit is the last backstop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import orjson
from aio_pika.abc import (
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aiormq.abc import DeliveredMessage

from postback_core.amqp import CONNECT_ERRORS, connect_robust
from postback_core.contracts import ContractError, OversizedEvent
from postback_core.db.base import asyncpg_dsn, keep_session_state
from postback_core.enums import (
    AttemptOutcome,
    AttemptTrigger,
    ConversionStatus,
    DeadLetterReason,
    DeliveryStatus,
)
from postback_core.logs import delivery_context
from postback_core.security import mask_in_text
from postback_core.topology import (
    DEAD_EXCHANGE,
    HEADER_ATTEMPT,
    HEADER_BODY_BYTES,
    HEADER_BODY_SHA256,
    HEADER_DEAD_REASON,
    HEADER_DEFERRALS,
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
from postback_dispatcher.breaker import (
    CONNECTION_LEVEL_ERRORS,
    CircuitBreakers,
    Failure,
    HostLimiter,
    endpoint_key,
)
from postback_dispatcher.broker import ConfirmedPublisher, Subscription
from postback_dispatcher.events import DispatchEvent, decode_event
from postback_dispatcher.metrics import observe_attempt, observe_dead_letter, observe_delivered
from postback_dispatcher.rendering import compile_template
from postback_dispatcher.repository import (
    DATA_ERRORS,
    DATABASE_AWAY,
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
# Headers travel in one AMQP frame (128 KiB by default): each carried value is
# cut to this, so a follow-up publish can't fail on the size of what it carries.
MAX_HEADER_CHARS = 1000
MAX_CARRIED_HEADERS = 16
# What is kept of an oversized body in its dead letter (the whole body is not
# republished; its size and hash travel in headers).
OVERSIZED_EXCERPT_BYTES = 1024
MAX_SEQUENCE = 2**31 - 1  # deliveries.sequence is an int column
MAX_DEFERRALS = 10  # per attempt; then the message is sent even to a paused target
# Every broker step after a send (retry/dead-letter publish, nack) ends within
# this: a channel replaced by a reconnect must fail the step, not hold it forever.
FOLLOW_UP_SECONDS = 30.0
RETRYABLE_STATUSES = frozenset({408, 425, 429})
PERMANENT_ERRORS = {
    "SSRFBlocked": DeadLetterReason.SSRF_BLOCKED,
    "InvalidURL": DeadLetterReason.INVALID_URL,
    "TooManyRedirects": DeadLetterReason.TOO_MANY_REDIRECTS,
}
# Triggers a message may carry (a header): anything else counts as a first attempt.
MESSAGE_TRIGGERS = {
    t.value: t for t in (AttemptTrigger.FIRST, AttemptTrigger.RETRY, AttemptTrigger.REPLAY)
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


def mask_token(text: str, token: str | None, url: str, *, cut: bool = False) -> str:
    """Text about a request to ``url``: the token and the URL's credentials hidden."""
    return mask_in_text(text, token, url=url, cut=cut)


def classify(result: SendResult) -> tuple[str, str | None]:
    """("delivered" | "retry" | "dead", dead reason)."""
    if result.ok:
        return AttemptOutcome.DELIVERED, None
    if result.error_class in PERMANENT_ERRORS:
        return AttemptOutcome.DEAD, PERMANENT_ERRORS[result.error_class]
    status = result.status
    if status is None or status >= 500 or status in RETRYABLE_STATUSES:
        return AttemptOutcome.RETRY, None
    if 400 <= status < 500:
        return AttemptOutcome.DEAD, DeadLetterReason.PERMANENT_HTTP_4XX
    return AttemptOutcome.DEAD, DeadLetterReason.UNEXPECTED_STATUS


def breaker_failure(result: SendResult, verdict: str) -> Failure | None:
    """What a sent request says about its target, for the breaker."""
    if verdict != AttemptOutcome.RETRY:
        return None  # delivered, or refused for good: the target answered
    if result.status is None and result.error_class in CONNECTION_LEVEL_ERRORS:
        return Failure.HOST
    return Failure.ENDPOINT


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
    database_waits: int = 0


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
        self._subscription: Subscription | None = None
        self._work_queue = ""
        self._pool: asyncpg.Pool | None = None
        self._log: AttemptLogWriter | None = None
        self._cache: PostbackSettingsCache | None = None
        self._archiver: DeadLetterArchiver | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # (conversion, sequence) being worked on -> a future for copies waiting on it.
        self._in_flight: dict[tuple[int, int], asyncio.Future[bool] | None] = {}
        self._acks = AckBatcher()
        self._claims: ClaimBatcher | None = None
        self._stopping = False
        self._consume_wanted = True
        self._connector: asyncio.Task[None] | None = None

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
        self._consume_wanted = consume
        try:
            await self._connect_broker()
        except CONNECT_ERRORS as exc:
            # Started while no node answers: keep trying in the background (not
            # ready meanwhile, see ``broker_connected``) instead of failing start-up.
            log.warning(
                "%s: no broker node answers (%s); connecting in the background", self.name, exc
            )
            self._connector = asyncio.create_task(self._connect_until_up(), name="broker-connect")

    async def _connect_broker(self) -> None:
        """Connect (to the first node that answers), declare, attach; consume if wanted."""
        assert self._pool is not None
        connection = await connect_robust(
            self.settings.amqp_url, client_properties={"connection_name": self.name}
        )
        try:
            setup = await connection.channel()
            topology = await declare_topology(setup, self.delays)
            await setup.close()
            await self.publisher.attach(connection)
            if self.archive_dead_letters:
                self._archiver = DeadLetterArchiver(self._pool)
                await self._archiver.start(connection)
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=self.settings.concurrency)
        except BaseException:
            await asyncio.gather(connection.close(), return_exceptions=True)
            raise
        self._connection, self._channel = connection, channel
        self._work_queue = topology.work_queue.name
        if self._consume_wanted:
            await self.consume()

    async def _connect_until_up(self) -> None:
        delay = 0.5
        while not self._stopping:
            await asyncio.sleep(delay)
            try:
                await self._connect_broker()
                log.info("%s: connected to the broker", self.name)
                return
            except CONNECT_ERRORS as exc:
                log.warning("%s: broker still unreachable (%s)", self.name, exc)
            delay = min(delay * 2, 5.0)

    async def consume(self) -> None:
        """Start taking messages from the work queue (again after every reconnect).

        Not connected yet: consuming starts as soon as the connection is made.
        """
        self._consume_wanted = True
        if self._channel is None or self._subscription is not None:
            return
        # After a reconnect the robust channel restores its QoS; the subscription
        # subscribes again.
        self._subscription = Subscription(
            self._channel,
            self._work_queue,
            self._on_delivery,
            arguments={"x-priority": self.consumer_priority},
        )
        await self._subscription.start()
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
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(BaseException):
                await self._connector
            self._connector = None
        if self._subscription is not None:
            await self._subscription.cancel()
            self._subscription = None
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
            self._channel = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # -- per message ---------------------------------------------------------------

    async def _on_delivery(self, raw: DeliveredMessage) -> None:
        """Hand the message to a task of our own, not aiormq's.

        aiormq cancels its consumer tasks when their channel closes (a broker
        node going away): a send cut there leaves the outcome unwritten although
        the receiver answered, and the redelivered copy is sent again. Our own
        task finishes the follow-up (the outcome becomes durable, so the copy's
        claim sees it); only its ack is void (the channel is gone).
        """
        if self._stopping:
            return  # arrived after the cancel: unacked, it returns to the queue on close
        message = Delivery(raw)
        self._acks.received(message)
        task = asyncio.get_running_loop().create_task(self._handle(message))
        self._tasks.add(task)  # tracked for in_flight and the stop
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, message: Delivery) -> None:
        try:
            await self._process(message)
        except asyncio.CancelledError:
            raise  # stop: unacked, so the broker redelivers it
        except Exception:
            self.metrics.errors += 1
            log.exception("postback handling failed; the message returns to the queue")
            with contextlib.suppress(Exception):
                await asyncio.sleep(1.0)
                async with asyncio.timeout(FOLLOW_UP_SECONDS):
                    await message.nack(requeue=True)
                self._acks.settled(message)

    async def _process(self, message: Delivery) -> None:
        assert self._pool is not None and self._cache is not None and self._log is not None
        headers: Mapping[str, Any] = message.headers or {}
        try:
            event = decode_event(message.body)
            sequence = header_int(headers, HEADER_SEQUENCE)
            if not 0 <= sequence <= MAX_SEQUENCE:
                raise ContractError(f"{HEADER_SEQUENCE} header out of range: {sequence}"[:200])
        except ContractError as exc:
            await self._dead_letter_unreadable(message, headers, exc)
            return
        if event.status != ConversionStatus.APPROVED:
            # Until postbacks are routed per status, only approved conversions fire one.
            self._acks.ack(message)
            return

        key = (event.conversion_id, sequence)
        in_flight = self._in_flight
        while key in in_flight:
            # A copy of a message this process is working on right now (e.g. the
            # gateway published it twice, or the broker redelivered it after a
            # reconnect): the first copy owns the follow-up. This one is acked only
            # once that follow-up is done (state durable); if the first copy failed
            # instead, this one takes over.
            waiter = in_flight[key]
            if waiter is None:
                waiter = in_flight[key] = asyncio.get_running_loop().create_future()
            if await asyncio.shield(waiter):
                self.metrics.duplicates_dropped += 1
                log.info("conversion %s: duplicate of an in-flight copy acked", event.conversion_id)
                self._acks.ack(message)
                return
        in_flight[key] = None
        settled = False
        try:
            # Every line logged for this delivery carries its conversion and event ids.
            with delivery_context(event.conversion_id, event.event_id):
                await self._deliver(message, headers, event, sequence)
            settled = True
        finally:
            waiter = in_flight.pop(key, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(settled)

    async def _deliver(
        self,
        message: Delivery,
        headers: Mapping[str, Any],
        event: DispatchEvent,
        sequence: int,
    ) -> None:
        assert self._cache is not None and self._log is not None and self._claims is not None
        trigger = MESSAGE_TRIGGERS.get(
            header_text(headers, HEADER_TRIGGER) or "", AttemptTrigger.FIRST
        )
        try:
            target = self._cache.cached(event.publisher_id)
        except LookupError:
            target = await self._when_database_is_back(self._cache.get, event.publisher_id)
        if target is None:
            await self._skip(message, event, sequence, trigger, headers)
            return

        token = target.security_token
        compiled = compile_template(target.url_template)
        url = compiled.render(event, token)
        url_masked = mask_token(url, token, url)

        host = compiled.host or host_key(url)
        endpoint = endpoint_key(url_masked)
        # A message deferred this often goes out even so (it then uses an attempt), so
        # a target that never recovers still ends its messages as dead letters.
        deferrals = header_int(headers, HEADER_DEFERRALS) if HEADER_DEFERRALS in headers else 0
        may_defer = deferrals < MAX_DEFERRALS
        if may_defer and self.breakers.is_paused(endpoint, host):
            await self._defer(message, headers, event, sequence, endpoint, host, claimed=False)
            return

        request = ClaimRequest(event.conversion_id, event.event_id, event.publisher_id, sequence)
        try:
            claim = await self._claims.claim(request)
        except DATA_ERRORS:
            raise
        except DATABASE_AWAY:
            claim = await self._when_database_is_back(self._claims.claim, request)
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
            history["reason"] = DeadLetterReason.EXHAUSTED
            await self._publish_dead(
                message, headers, DeadLetterReason.EXHAUSTED, history, url_masked
            )
            await self._log.write(
                None,
                DeliveryOutcome(
                    event.conversion_id,
                    sequence,
                    DeliveryStatus.DEAD,
                    history.get("last_status"),
                    history.get("last_error"),
                ),
            )
            self.metrics.dead_lettered += 1
            self._acks.ack(message)
            return

        attempt_no = claim.attempt_no
        attempt_trigger = (
            trigger if attempt_no == 1 or trigger == AttemptTrigger.REPLAY else AttemptTrigger.RETRY
        )
        if (
            attempt_no > 1
            and trigger == AttemptTrigger.REPLAY
            and header_int(headers, HEADER_ATTEMPT) > 0
        ):
            attempt_trigger = AttemptTrigger.RETRY
        started_at = _now()
        await self.limiter.acquire(host)
        try:
            # Asked again: the target may have been paused while this one waited for a slot.
            if not self.breakers.allow(endpoint, host) and may_defer:
                result = None
            else:
                event_id = str(event.event_id)
                headers_for = functools.partial(postback_headers, event_id, token)
                result = await self.sender.send(
                    url, postback_headers(event_id, token, url), headers_for=headers_for
                )
        finally:
            self.limiter.release(host)
        if result is None:
            await self._defer(message, headers, event, sequence, endpoint, host, claimed=True)
            return
        verdict, reason = classify(result)
        self.breakers.record(endpoint, host, breaker_failure(result, verdict))
        outcome_name = verdict

        error_text = self._error_text(result, token, url)
        if verdict == "retry" and attempt_no >= self.max_attempts:
            verdict, reason = "dead", "exhausted"
        if verdict == "dead":
            outcome_name = AttemptOutcome.DEAD
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
            else mask_token(result.final_url, token, url),
            http_status=result.status,
            duration_ms=result.duration_ms,
            error_class=result.error_class,
            error_message=mask_token(result.error_message, token, url)
            if result.error_message
            else None,
            response_excerpt=mask_token(result.response_excerpt, token, url, cut=True)
            if result.response_excerpt
            else None,
            created_at=started_at,
        )
        observe_attempt(
            AttemptOutcome(outcome_name),
            http_status=result.status,
            duration_seconds=result.duration_ms / 1000,
            reason=DeadLetterReason(reason or DeadLetterReason.EXHAUSTED)
            if verdict == AttemptOutcome.DEAD
            else None,
            conversion_id=event.conversion_id,
            event_id=event.event_id,
            attempt_no=attempt_no,
            url_masked=record.url_masked,
            error_class=result.error_class,
        )

        if verdict == AttemptOutcome.DELIVERED:
            await self._log.write(
                record,
                DeliveryOutcome(
                    event.conversion_id, sequence, DeliveryStatus.DELIVERED, result.status, None
                ),
            )
            self.metrics.delivered += 1
            observe_delivered((_now() - event.occurred_at).total_seconds())
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

        if verdict == AttemptOutcome.RETRY:
            delay = self._retry_delay(attempt_no, result.retry_after)
            retry_headers = self._carry_headers(headers, history)
            retry_headers[HEADER_ATTEMPT] = attempt_no
            retry_headers[HEADER_TRIGGER] = AttemptTrigger.RETRY
            retry_headers[HEADER_SEQUENCE] = sequence
            retry_headers.pop(HEADER_DEFERRALS, None)  # an attempt was made: deferrals anew
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
                    event.conversion_id, sequence, DeliveryStatus.PENDING, result.status, error_text
                ),
            )
            self.metrics.retried += 1
            self._acks.ack(message)
            return

        dead_reason = reason or DeadLetterReason.EXHAUSTED
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
            DeliveryOutcome(
                event.conversion_id, sequence, DeliveryStatus.DEAD, result.status, error_text
            ),
        )
        self.metrics.dead_lettered += 1
        self._acks.ack(message)

    async def _defer(
        self,
        message: Delivery,
        headers: Mapping[str, Any],
        event: DispatchEvent,
        sequence: int,
        endpoint: str,
        host: str,
        *,
        claimed: bool,
    ) -> None:
        """The target is paused: to the retry tier that outlasts the pause, no attempt used.

        ``claimed``: the attempt was already counted (the pause began while this one
        waited for a host slot), so it is given back.
        """
        assert self._log is not None
        self.metrics.breaker_open += 1
        pause = self.breakers.paused_for(endpoint, host) or self.breakers.cooldown_seconds
        delay = self._retry_delay(1, pause)
        log.info(
            "target paused (%s): conversion %s deferred %gs without a request",
            endpoint,
            event.conversion_id,
            delay,
        )
        deferred_headers = self._carry_headers(headers, self._history_from(headers))
        deferred_headers[HEADER_SEQUENCE] = sequence
        deferred_headers[HEADER_DEFERRALS] = header_int(headers, HEADER_DEFERRALS) + 1
        await self.publisher.publish(
            RETRY_EXCHANGE,
            retry_routing_key(delay),
            message.body,
            deferred_headers,
            message_id=str(event.event_id),
        )
        if claimed:
            await self._log.write(
                None,
                DeliveryOutcome(
                    event.conversion_id,
                    sequence,
                    DeliveryStatus.PENDING,
                    None,
                    None,
                    released_attempts=1,
                ),
            )
        self._acks.ack(message)

    # -- helpers -------------------------------------------------------------------

    async def _when_database_is_back(
        self, query: Callable[[Any], Awaitable[Any]], argument: object
    ) -> Any:
        """``query(argument)``, retried in place while the database is away.

        Only for steps before the request is sent (nothing to undo). The message
        stays unacked meanwhile instead of bouncing through the broker once a
        second, which would use up its delivery limit during a long outage.
        """
        delay = 0.1
        while True:
            try:
                return await query(argument)
            except DATA_ERRORS:
                raise
            except DATABASE_AWAY as exc:
                if self._stopping:
                    raise
                self.metrics.database_waits += 1
                log.warning("database unavailable (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    @staticmethod
    def _error_text(result: SendResult, token: str | None, url: str) -> str | None:
        """``Class: message`` with the token masked (messages may quote the URL)."""
        if result.error_class is None:
            return None
        if result.error_message:
            return mask_token(f"{result.error_class}: {result.error_message}", token, url)[:1000]
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
        """Our own headers for the next hop: known scalars only, each value bounded."""
        carried: dict[str, Any] = {}
        for name, value in headers.items():
            if not name.startswith("x-postback-") or len(name) > 64:
                continue
            if len(carried) >= MAX_CARRIED_HEADERS:
                break
            if isinstance(value, bytes | bytearray):
                value = value.decode("utf-8", "replace")
            if isinstance(value, str):
                carried[name] = value[:MAX_HEADER_CHARS]
            elif isinstance(value, int | float) and not isinstance(value, bool):
                carried[name] = value
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

    async def _dead_letter_unreadable(
        self, message: Delivery, headers: Mapping[str, Any], error: ContractError
    ) -> None:
        """Poison or oversized: straight to the dead-letter queue with the reason, acked.

        An oversized body is not copied: its dead letter carries an excerpt, and
        the full size and hash in (small) headers.
        """
        body = message.body
        reason = DeadLetterReason.POISON
        extra: dict[str, Any] = {}
        if isinstance(error, OversizedEvent):
            reason = DeadLetterReason.OVERSIZED
            extra[HEADER_BODY_BYTES] = len(body)
            extra[HEADER_BODY_SHA256] = hashlib.sha256(body).hexdigest()
            body = body[:OVERSIZED_EXCERPT_BYTES]
        self.metrics.poison += 1
        log.warning("%s message dead-lettered: %s", reason, error.reason[:200])
        history = {"reason": reason, "last_error": error.reason[:MAX_HEADER_CHARS], "attempts": []}
        await self._publish_dead(
            message, headers, reason, history, url_masked=None, body=body, extra=extra
        )
        self._acks.ack(message)

    async def _publish_dead(
        self,
        message: Delivery,
        headers: Mapping[str, Any],
        reason: str,
        history: dict[str, Any],
        url_masked: str | None,
        attempt_no: int | None = None,
        *,
        body: bytes | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        observe_dead_letter(DeadLetterReason(reason))
        dead_headers = self._carry_headers(headers, history)
        dead_headers[HEADER_DEAD_REASON] = reason
        if attempt_no is not None:
            dead_headers[HEADER_ATTEMPT] = attempt_no
        if url_masked:
            dead_headers[HEADER_URL_MASKED] = url_masked[:MAX_HEADER_CHARS]
        if extra:
            dead_headers.update(extra)
        await self.publisher.publish(
            DEAD_EXCHANGE, "", message.body if body is None else body, dead_headers
        )

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
                # A header, so anything: kept within the int column.
                attempt_no=min(max(header_int(headers, HEADER_ATTEMPT), 0), MAX_SEQUENCE - 1) + 1,
                trigger=trigger,
                outcome=AttemptOutcome.SKIPPED,
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
            "dead_letters_unstorable": self._archiver.unstorable_total if self._archiver else 0,
            "attempt_log_write_failures": self._log.write_failures if self._log else 0,
        }
