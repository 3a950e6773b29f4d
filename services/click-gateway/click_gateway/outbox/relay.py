"""The transactional-outbox relay: moves committed events from PostgreSQL to RabbitMQ.

Latency path: the outbox INSERT trigger NOTIFYs channel ``outbox`` on commit;
this relay LISTENs on a raw asyncpg connection and drains immediately, so a
conversion's event is on the broker a few milliseconds after its commit. A
poll every ``OUTBOX_POLL_SECONDS`` is the safety net for lost notifications
(reconnects, a relay that was busy).

Each batch is claimed with ``FOR UPDATE SKIP LOCKED`` (so any number of gateway
processes can relay at once without publishing a row twice), published
concurrently with publisher confirms, and marked published in the same
transaction. A batch goes to the broker in one socket write
(``postback_core.amqp_batch``: aio-pika's per-message ``publish`` cost more CPU
than the rest of a conversion, and in a busy event loop it sent about one
message per loop iteration); every message's confirm is still awaited. A failed
publish leaves the row for later and records
``publish_attempts``/``last_error``; the relay then backs off and reconnects,
forever. Delivery is at-least-once (a crash between the broker's ack and our
commit republishes): consumers dedupe by ``message_id`` = event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiormq
import asyncpg
import orjson
from aio_pika.abc import AbstractChannel, AbstractConnection
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from click_gateway.outbox import repository
from click_gateway.settings import GatewaySettings
from postback_core import amqp
from postback_core.amqp_batch import Outgoing, publish_batch
from postback_core.db.base import asyncpg_dsn
from postback_core.topology import declare_topology

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "outbox"
SCHEMA_VERSION_HEADER = "x-schema-version"
BROKER_CONNECT_TIMEOUT = 5.0
PUBLISH_TIMEOUT = 10.0
BACKOFF_INITIAL = 0.05
BACKOFF_MAX = 2.0
# A row the broker itself refuses (nack, unroutable) is retried on its own
# schedule, so one bad row never holds up the rest of the outbox.
REFUSED_RETRY_INITIAL = 1.0
REFUSED_RETRY_MAX = 60.0
# Published rows are kept a day for operators, then pruned now and then.
PRUNE_EVERY_SECONDS = 600.0
KEEP_PUBLISHED_SECONDS = 86_400.0


class PublishFailed(RuntimeError):
    pass


class OutboxRelay:
    def __init__(
        self, settings: GatewaySettings, sessionmaker: async_sessionmaker[AsyncSession]
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._db: asyncpg.Connection | None = None
        self._broker: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._underlay: aiormq.Channel | None = None
        self._broker_ready = False
        self._next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
        # id -> (monotonic time of next try, current delay) for broker-refused rows.
        self._refused: dict[int, tuple[float, float]] = {}
        self.published_count = 0

    @property
    def broker_connected(self) -> bool:
        return self._broker_ready

    async def start(self) -> None:
        """Returns at once: the relay connects (and keeps reconnecting) in the background."""
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name="outbox-relay")

    def wake(self) -> None:
        """New rows committed in this process: drain now, don't wait for the NOTIFY."""
        self._wake.set()

    async def stop(self) -> None:
        """Let the batch in flight finish (bounded), then close both connections."""
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), PUBLISH_TIMEOUT + 5)
            except (TimeoutError, Exception):  # pragma: no cover - last resort
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task
            self._task = None
        await self._close_broker()
        await self._close_db()

    # -- main loop -------------------------------------------------------

    async def _run(self) -> None:
        backoff = BACKOFF_INITIAL
        while not self._stopping.is_set():
            try:
                await self._ensure_db()
                await self._ensure_broker()
                # Clear before draining: a NOTIFY that lands mid-drain re-wakes us.
                self._wake.clear()
                await self._drain()
                backoff = BACKOFF_INITIAL
                await self._maybe_prune()
                await self._wait_for_wake(self.settings.outbox_poll_seconds)
            except Exception as exc:
                log.warning("outbox relay: %s; retrying in %.2fs", _describe(exc), backoff)
                await self._pause(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _drain(self) -> None:
        """Publish batches until the outbox has nothing unpublished left for us."""
        assert self._db is not None
        batch_size = self.settings.outbox_batch_size
        while not self._stopping.is_set():
            failed: list[tuple[int, BaseException]] = []
            async with self._db.transaction():
                rows = await repository.claim_batch(self._db, batch_size, self._refused_now())
                if not rows:
                    return
                results = await self._publish(rows)
                for row, result in zip(rows, results, strict=True):
                    if result is not None:
                        failed.append((row["id"], result))
                    else:
                        self._refused.pop(row["id"], None)
                if failed:
                    error = _describe(failed[0][1])
                    await repository.unmark_failed(self._db, [i for i, _ in failed], error)
            self.published_count += len(rows) - len(failed)
            if failed:
                if any(_is_connection_error(exc) for _, exc in failed):
                    await self._close_broker()
                    raise PublishFailed(
                        f"{len(failed)} of {len(rows)} events not published: {error}"
                    )
                # The broker is fine but refused these messages: park them, go on.
                log.error("outbox relay: broker refused %d event(s): %s", len(failed), error)
                for row_id, _ in failed:
                    self._park(row_id)
            if len(rows) < batch_size:
                return

    async def _publish(self, rows: list[asyncpg.Record]) -> list[BaseException | None]:
        """One write for the whole batch; one outcome (None = confirmed) per row."""
        if self._underlay is None:
            error = PublishFailed("not connected to the broker")
            return [error for _ in rows]
        return await publish_batch(
            self._underlay, [_outgoing(row) for row in rows], confirm_timeout=PUBLISH_TIMEOUT
        )

    def _refused_now(self) -> list[int]:
        now = time.monotonic()
        return [i for i, (retry_at, _) in self._refused.items() if retry_at > now]

    def _park(self, row_id: int) -> None:
        _, delay = self._refused.get(row_id, (0.0, REFUSED_RETRY_INITIAL / 2))
        delay = min(delay * 2, REFUSED_RETRY_MAX)
        self._refused[row_id] = (time.monotonic() + delay, delay)

    # -- connections -----------------------------------------------------

    async def _ensure_db(self) -> None:
        if self._db is not None and not self._db.is_closed():
            return
        await self._close_db()
        conn = await asyncpg.connect(
            asyncpg_dsn(self.settings.database_url),
            server_settings={
                "application_name": "click-gateway-outbox-relay",
                # The relay only marks rows published after the broker confirmed
                # them. Losing the last marks in a PostgreSQL crash republishes
                # those events (consumers dedupe by event id), so its commits
                # need not wait for a WAL flush: one fsync less per batch.
                "synchronous_commit": "off",
            },
        )
        await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
        conn.add_termination_listener(lambda _conn: self._wake.set())
        self._db = conn

    async def _ensure_broker(self) -> None:
        if self._broker_ready and self._broker is not None and not self._broker.is_closed:
            return
        await self._close_broker()
        connection = await amqp.connect(
            self.settings.amqp_url,
            connect_seconds=BROKER_CONNECT_TIMEOUT,
            client_properties={"connection_name": "click-gateway-outbox-relay"},
        )
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            await declare_topology(channel, self.settings.postback_retry_delays)
        except BaseException:
            await connection.close()
            raise
        connection.close_callbacks.add(self._on_broker_closed)
        self._broker, self._channel = connection, channel
        underlay = await channel.get_underlay_channel()
        assert isinstance(underlay, aiormq.Channel)  # for publish_batch
        self._underlay = underlay
        self._broker_ready = True
        log.info("outbox relay connected to the broker")

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    def _on_broker_closed(self, *_: object) -> None:
        if self._broker_ready:
            log.warning("outbox relay lost the broker connection")
        self._broker_ready = False
        self._wake.set()  # reconnect now rather than at the next poll

    async def _close_broker(self) -> None:
        self._broker_ready = False
        connection, self._broker, self._channel = self._broker, None, None
        self._underlay = None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)

    async def _close_db(self) -> None:
        conn, self._db = self._db, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)

    # -- waiting ---------------------------------------------------------

    async def _wait_for_wake(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _pause(self, delay: float) -> None:
        """Back off; only stopping cuts it short (a NOTIFY storm must not)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    async def _maybe_prune(self) -> None:
        if time.monotonic() < self._next_prune or self._db is None:
            return
        self._next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
        # Forget parked rows that nobody retried for a long time (deleted meanwhile).
        stale = time.monotonic() - 2 * REFUSED_RETRY_MAX
        self._refused = {i: v for i, v in self._refused.items() if v[0] > stale}
        await repository.delete_published_before(self._db, KEEP_PUBLISHED_SECONDS)


def _outgoing(row: asyncpg.Record) -> Outgoing:
    payload: bytes = row["payload"]
    headers: dict[str, Any] | None = None
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
        version = orjson.loads(payload).get("schema_version")
        if isinstance(version, int):
            headers = {SCHEMA_VERSION_HEADER: version}
    return Outgoing(
        exchange=row["exchange"],
        routing_key=row["routing_key"],
        body=payload,
        message_id=str(row["event_id"]),
        headers=headers,
    )


def _is_connection_error(exc: BaseException) -> bool:
    """A broker nack/return is about the message; anything else means the link is bad."""
    import aiormq.exceptions

    return not isinstance(exc, aiormq.exceptions.DeliveryError | aiormq.exceptions.PublishError)


def _describe(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"[:500]
