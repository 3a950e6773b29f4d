"""Connections to a RabbitMQ cluster: ``AMQP_URL`` may list one URL per node.

Both services connect to the first node that answers and move to another when
theirs goes away, for publishing and consuming alike: quorum queues are
replicated, so any node serves every queue (a node that is not a queue's leader
forwards to it).

- ``connect`` is for code that manages its own reconnects (the outbox relay,
  replays, ``migrate``): each call tries the nodes in order, starting with the
  one that answered last time.
- ``connect_robust`` is aio-pika's robust connection (channels, QoS and
  consumers restored after a reconnect), except that every reconnection attempt
  goes to the next node in the list instead of insisting on the lost one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractRobustConnection
from yarl import URL

CONNECT_TIMEOUT_SECONDS = 5.0
# What a node that is down (or not a node) raises on connect.
CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    OSError,
    TimeoutError,
    aio_pika.exceptions.AMQPConnectionError,
)


def broker_urls(setting: str) -> tuple[str, ...]:
    """The node URLs of an ``AMQP_URL`` setting (comma-separated); raises on a bad one."""
    urls = tuple(part.strip() for part in setting.split(",") if part.strip())
    if not urls:
        raise ValueError("AMQP_URL names no broker")
    for url in urls:
        if not (url.startswith("amqp://") or url.startswith("amqps://")):
            raise ValueError("every AMQP_URL entry must be an amqp:// or amqps:// URL")
    return urls


class _NodeOrder:
    """Remembers which node answered last, so the next connect starts there."""

    def __init__(self) -> None:
        self._last_good: dict[tuple[str, ...], int] = {}

    def order(self, urls: tuple[str, ...]) -> list[int]:
        start = self._last_good.get(urls, 0)
        return [(start + offset) % len(urls) for offset in range(len(urls))]

    def answered(self, urls: tuple[str, ...], index: int) -> None:
        self._last_good[urls] = index


_order = _NodeOrder()


async def connect(
    setting: str | Sequence[str],
    *,
    connect_seconds: float = CONNECT_TIMEOUT_SECONDS,
    **kwargs: Any,
) -> AbstractConnection:
    """A plain connection to the first node that answers."""
    urls = broker_urls(setting) if isinstance(setting, str) else tuple(setting)
    last: BaseException | None = None
    for index in _order.order(urls):
        try:
            connection = await aio_pika.connect(urls[index], timeout=connect_seconds, **kwargs)
        except CONNECT_ERRORS as exc:
            last = exc
            continue
        _order.answered(urls, index)
        return connection
    assert last is not None
    raise last


class FailoverConnection(aio_pika.RobustConnection):
    """A robust connection that tries the next node on every reconnection attempt.

    aio-pika's robust connection clears ``transport`` at the start of every
    connection attempt and reads ``url`` in it (aio-pika is pinned); the first
    clearing is the constructor's, the second the first attempt's. From the
    third on, each one moves ``url`` to the next node.
    """

    def __init__(self, urls: Sequence[str], start: int = 0, **kwargs: Any) -> None:
        self._node_urls = tuple(URL(u) for u in urls)
        self._node = start % len(self._node_urls)
        self._transport_clearings = 0
        super().__init__(self._node_urls[self._node], **kwargs)

    @property
    def transport(self) -> Any:
        return self.__dict__.get("_failover_transport")

    @transport.setter
    def transport(self, value: Any) -> None:
        if value is None:
            self._transport_clearings += 1
            if self._transport_clearings > 2 and len(self._node_urls) > 1:
                self._node = (self._node + 1) % len(self._node_urls)
                self.url = self._node_urls[self._node]
        self.__dict__["_failover_transport"] = value

    @property
    def node_url(self) -> URL:
        """The node this connection uses (or tries) now."""
        return self._node_urls[self._node]


async def connect_robust(
    setting: str | Sequence[str],
    *,
    connect_seconds: float = CONNECT_TIMEOUT_SECONDS,
    reconnect_interval: float = 1.0,
    **kwargs: Any,
) -> AbstractRobustConnection:
    """A robust connection, first made to the first node that answers."""
    urls = broker_urls(setting) if isinstance(setting, str) else tuple(setting)
    last: BaseException | None = None
    for index in _order.order(urls):
        connection = FailoverConnection(
            urls, start=index, reconnect_interval=reconnect_interval, **kwargs
        )
        try:
            await asyncio.wait_for(connection.connect(timeout=connect_seconds), connect_seconds + 1)
        except CONNECT_ERRORS as exc:
            last = exc
            await asyncio.gather(connection.close(), return_exceptions=True)
            continue
        _order.answered(urls, index)
        return connection
    assert last is not None
    raise last
