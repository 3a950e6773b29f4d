"""Fixtures and factories for the operator and publisher features (API, CLI, pages).

Dead letters are inserted directly (as the archiver would store them) so these
tests do not depend on driving a postback to exhaustion first.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from postback_core.contracts import ConversionEvent
from postback_core.db.base import create_engine, create_sessionmaker, unit_of_work
from postback_core.db.models import (
    DeadLetter,
    DeliveryAttempt,
    PostbackSettings,
    Publisher,
)
from postback_core.security import generate_api_key, hash_api_key

if TYPE_CHECKING:
    from tests.postback_dispatcher.conftest import DispatcherHandle

# A range of its own (high bigints), so these never meet the delivery tests' conversion ids.
_conversion_ids = itertools.count(5 * 10**18 + int(datetime.now(UTC).timestamp() * 1000) * 1000)


@dataclass
class PublisherAccount:
    id: int
    name: str
    api_key: str


@pytest.fixture(scope="session")
async def db(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url, pool_size=2)
    yield create_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture(scope="session")
def portal_url(dispatcher: DispatcherHandle) -> str:
    """The shared test dispatcher (consumer included; private targets allowed for loopback)."""
    return dispatcher.base_url


@pytest.fixture
async def api(portal_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=portal_url, timeout=15) as client:
        yield client


async def create_publisher(
    db: async_sessionmaker[AsyncSession],
    *,
    url_template: str | None = None,
    security_token: str | None = None,
) -> PublisherAccount:
    api_key = generate_api_key("pub")
    name = f"pub-{uuid.uuid4().hex[:8]}"
    async with unit_of_work(db) as session:
        publisher = Publisher(name=name, api_key_hash=hash_api_key(api_key))
        session.add(publisher)
        await session.flush()
        if url_template is not None:
            session.add(
                PostbackSettings(
                    publisher_id=publisher.id,
                    url_template=url_template,
                    security_token=security_token,
                )
            )
        return PublisherAccount(publisher.id, name, api_key)


async def insert_dead_letter(
    db: async_sessionmaker[AsyncSession],
    *,
    publisher_id: int,
    payout: str = "0.50",
    offer_id: int = 42,
    reason: str = "exhausted",
    last_status: int | None = 503,
    dead_at: datetime | None = None,
    attempts: int = 2,
    external_id: str = "ext-1",
    with_history: bool = True,
) -> DeadLetter:
    """A dead letter as the archiver stores it, with its conversion's attempt log."""
    conversion_id = next(_conversion_ids)
    event = ConversionEvent(
        conversion_id=conversion_id,
        click_id=conversion_id + 7,
        external_id=external_id,
        publisher_id=publisher_id,
        offer_id=offer_id,
        smartlink_id=3,
        payout=Decimal(payout),
        country="US",
        occurred_at=datetime.now(UTC),
    )
    now = datetime.now(UTC)
    async with unit_of_work(db) as session:
        row = DeadLetter(
            event_key=str(event.event_id),  # as the archiver keys them
            event_id=event.event_id,
            sequence=0,
            conversion_id=conversion_id,
            click_id=event.click_id,
            publisher_id=publisher_id,
            offer_id=offer_id,
            payout=Decimal(payout),
            url_masked=f"https://tracker.example/pb?cid={external_id}&token=***",
            attempts=attempts,
            last_status=last_status,
            last_error=f"HTTP{last_status}" if last_status else "ConnectionError",
            reason=reason,
            first_attempt_at=now - timedelta(minutes=5),
            last_attempt_at=now - timedelta(minutes=1),
            dead_at=dead_at or now,
            payload=event.to_json(),
            history={"attempts": attempts},
        )
        session.add(row)
        if with_history:
            for attempt_no in range(1, attempts + 1):
                session.add(
                    DeliveryAttempt(
                        conversion_id=conversion_id,
                        event_id=event.event_id,
                        publisher_id=publisher_id,
                        sequence=0,
                        attempt_no=attempt_no,
                        trigger="first" if attempt_no == 1 else "retry",
                        outcome="retry" if attempt_no < attempts else "dead",
                        url_masked=row.url_masked,
                        http_status=last_status,
                        duration_ms=Decimal("12.5"),
                        error_class=f"HTTP{last_status}",
                        response_excerpt="upstream down",
                    )
                )
        await session.flush()
        return row


class EventTap:
    """A private queue bound to the events exchange: sees every event published there."""

    def __init__(self, queue: object) -> None:
        self.queue = queue
        self.messages: list[object] = []

    async def drain(self) -> list[object]:
        import aio_pika

        assert isinstance(self.queue, aio_pika.abc.AbstractQueue)
        while True:
            message = await self.queue.get(no_ack=True, fail=False)
            if message is None:
                return self.messages
            self.messages.append(message)


@pytest.fixture
async def event_tap(amqp_url: str) -> AsyncIterator[EventTap]:
    import aio_pika

    from postback_core.contracts import CONVERSION_CREATED
    from postback_core.topology import EVENTS_EXCHANGE

    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.declare_exchange(EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(EVENTS_EXCHANGE, routing_key=CONVERSION_CREATED)
        yield EventTap(queue)
    finally:
        await connection.close()
