"""Long-lived things a dispatcher process owns, started and stopped by the lifespan."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from postback_core.db.base import create_engine, create_sessionmaker
from postback_dispatcher.broker import ConfirmedPublisher
from postback_dispatcher.consumer import PostbackConsumer
from postback_dispatcher.metrics import DispatcherMetrics, ScrapeSources
from postback_dispatcher.sender import Http1PostbackSender, PostbackSender
from postback_dispatcher.settings import DispatcherSettings
from postback_dispatcher.ssrf import TargetGuard
from postback_dispatcher.workers import WorkerProcesses, worker_settings


@dataclass
class DispatcherRuntime:
    """``sender`` and ``publisher`` are shared with the web layer (test sends, replays)."""

    settings: DispatcherSettings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    sender: PostbackSender
    publisher: ConfirmedPublisher
    consumer: PostbackConsumer
    metrics: DispatcherMetrics
    workers: WorkerProcesses | None = None
    # False (``serve --no-consume``): connected for publishing (replays), no consumers.
    consuming: bool = True
    scrape: ScrapeSources = field(init=False)

    def __post_init__(self) -> None:
        self.scrape = ScrapeSources(self)

    @classmethod
    def build(cls, settings: DispatcherSettings, *, consume: bool = True) -> DispatcherRuntime:
        engine = create_engine(settings.database_url, pool_size=settings.db_pool_size)
        sessionmaker = create_sessionmaker(engine)
        guard = TargetGuard(enabled=not settings.postback_allow_private_targets)
        sender = Http1PostbackSender(timeout_seconds=settings.postback_timeout_seconds, guard=guard)
        publisher = ConfirmedPublisher()
        consumer_settings = worker_settings(settings)
        consumer = PostbackConsumer(
            consumer_settings,
            sender=sender,
            publisher=publisher,
            # Light traffic goes to this process; workers take the overflow.
            consumer_priority=1 if settings.workers > 1 else 0,
            archive_dead_letters=consume,
        )
        return cls(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            sender=sender,
            publisher=publisher,
            consumer=consumer,
            metrics=DispatcherMetrics(consumer),
            workers=(
                WorkerProcesses(consumer_settings, settings.workers - 1)
                if settings.workers > 1 and consume
                else None
            ),
            consuming=consume,
        )

    async def start(self) -> None:
        await self.metrics.start()
        if not self.consuming:
            await self.consumer.start(consume=False)
            return
        if self.workers is None:
            await self.consumer.start()
            return
        # Start the worker processes while this one connects; all consume from the same
        # moment, so no consumer takes a head start on the backlog.
        outcomes = await asyncio.gather(
            self.consumer.start(consume=False), self.workers.start(), return_exceptions=True
        )
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if not failed:
            try:
                await self.consumer.consume()
                return
            except BaseException as exc:
                failed.append(exc)
        await asyncio.gather(self.consumer.stop(), self.workers.stop(), return_exceptions=True)
        raise failed[0]

    async def stop(self) -> None:
        try:
            # Every consumer drains its in-flight postbacks at the same time.
            if self.workers is not None:
                await asyncio.gather(self.consumer.stop(), self.workers.stop())
            else:
                await self.consumer.stop()
        finally:
            await self.metrics.stop()
            await self.scrape.close()
            await self.sender.close()
            await self.engine.dispose()
