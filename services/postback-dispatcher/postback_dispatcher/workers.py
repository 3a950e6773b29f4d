"""More consumer processes: ``DISPATCHER_WORKERS``.

One Python process delivers a few thousand postbacks per second before its CPU
is the limit. With ``DISPATCHER_WORKERS=N`` the serving process keeps its own
consumer (and the HTTP APIs, pages, dead-letter archiver) and starts N - 1 more
consumer processes. Each has its own event loop (uvloop), broker connection,
database pool and HTTP session; they consume the same quorum work queue, whose
messages the broker spreads over all consumers (each with its own prefetch).
Every rule of the consumer holds per message, whichever process has it: the
claim in PostgreSQL is what makes copies and redeliveries safe across processes.

Stopping: SIGTERM or SIGINT to a worker stops its consumption and lets its
in-flight postbacks finish (``SHUTDOWN_GRACE_SECONDS``); the serving process
forwards its own stop to every worker and waits for them. A worker whose parent
is gone stops the same way. A worker that dies unexpectedly is started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from postback_dispatcher.settings import DispatcherSettings

log = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 60.0
SUPERVISE_INTERVAL_SECONDS = 1.0
RESTART_BACKOFF_SECONDS = 2.0
GC_YOUNG_THRESHOLD = 20_000


def worker_settings(settings: DispatcherSettings) -> DispatcherSettings:
    """Settings for each consumer process: the per-host cap is shared out between them.

    ``POSTBACK_PER_HOST_CONCURRENCY`` bounds the sends to one host for the whole
    dispatcher, so each of N processes gets ceil(cap / N). ``DISPATCHER_CONCURRENCY``
    (the prefetch) is per process.
    """
    workers = settings.workers
    if workers <= 1:
        return settings
    per_host = -(-settings.per_host_concurrency // workers)
    return settings.model_copy(update={"per_host_concurrency": per_host})


def tune_gc() -> None:
    """Fewer garbage-collector passes on the hot path.

    Every postback allocates a few dozen short-lived objects, so with the default
    threshold (700) a young-generation pass runs every few messages, and older
    generations are walked over everything the process imported. Freeze what
    start-up created (never collected, never walked again) and let the young
    generation grow larger between passes; cycles are still collected.
    """
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), middle, old)


# -- the worker process ----------------------------------------------------------------


def _worker_main(settings: DispatcherSettings, index: int, conn: Connection) -> None:
    """Entry point of a worker process (multiprocessing, spawn)."""
    import uvloop

    from postback_core.logs import configure_logging_from
    from postback_core.process import name_this_process

    name_this_process("postback-dispatcher")
    configure_logging_from(settings)
    try:
        uvloop.run(_serve(settings, index, conn))
    except Exception:
        log.exception("dispatcher worker %d failed", index)
        raise SystemExit(1) from None


async def _serve(settings: DispatcherSettings, index: int, conn: Connection) -> None:
    from postback_dispatcher.broker import ConfirmedPublisher
    from postback_dispatcher.consumer import PostbackConsumer
    from postback_dispatcher.metrics import DispatcherMetrics
    from postback_dispatcher.sender import Http1PostbackSender
    from postback_dispatcher.ssrf import TargetGuard

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    parent = os.getppid()
    sender = Http1PostbackSender(
        timeout_seconds=settings.postback_timeout_seconds,
        guard=TargetGuard(enabled=not settings.postback_allow_private_targets),
    )
    consumer = PostbackConsumer(
        settings,
        sender=sender,
        publisher=ConfirmedPublisher(),
        name=f"postback-dispatcher-{index}",
        archive_dead_letters=False,
    )
    metrics = DispatcherMetrics(consumer)
    try:
        try:
            await metrics.start()
            await consumer.start()
        except BaseException as exc:
            with contextlib.suppress(OSError):
                conn.send(("failed", f"{type(exc).__name__}: {exc}"))
            raise
        tune_gc()
        conn.send(("ready", os.getpid()))
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SUPERVISE_INTERVAL_SECONDS)
            if os.getppid() != parent:
                log.warning("dispatcher worker %d: parent process gone, stopping", index)
                break
    finally:
        try:
            await consumer.stop()
        finally:
            await metrics.stop()
            await sender.close()
            conn.close()


# -- the serving process's side --------------------------------------------------------


class WorkerProcesses:
    """Starts, watches and stops the extra consumer processes."""

    def __init__(self, settings: DispatcherSettings, count: int) -> None:
        self._settings = settings
        self._count = count
        self._context = multiprocessing.get_context("spawn")
        self._procs: dict[int, BaseProcess] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs.values() if p.pid is not None]

    async def start(self) -> None:
        self._stopping = False
        try:
            await asyncio.gather(*(self._spawn(index) for index in range(1, self._count + 1)))
        except BaseException:
            await self.stop()
            raise
        self._supervisor = asyncio.create_task(self._supervise(), name="dispatcher-workers")
        log.info("dispatcher: %d extra consumer process(es): %s", self._count, self.pids)

    async def _spawn(self, index: int) -> None:
        parent_end, child_end = self._context.Pipe(duplex=False)
        proc = self._context.Process(
            target=_worker_main,
            args=(self._settings, index, child_end),
            name=f"postback-dispatcher-worker-{index}",
            daemon=False,
        )
        proc.start()
        child_end.close()
        self._procs[index] = proc
        try:
            ready = await asyncio.to_thread(parent_end.poll, START_TIMEOUT_SECONDS)
            message = parent_end.recv() if ready else ("failed", "no answer in time")
        except EOFError:
            message = ("failed", f"exited with code {proc.exitcode}")
        finally:
            parent_end.close()
        if message[0] != "ready":
            raise RuntimeError(f"dispatcher worker {index} did not start: {message[1]}")

    async def _supervise(self) -> None:
        while not self._stopping:
            await asyncio.sleep(SUPERVISE_INTERVAL_SECONDS)
            for index, proc in list(self._procs.items()):
                if self._stopping or proc.is_alive():
                    continue
                log.error(
                    "dispatcher worker %d (pid %s) exited with code %s; starting it again",
                    index,
                    proc.pid,
                    proc.exitcode,
                )
                self.restarts += 1
                await asyncio.sleep(RESTART_BACKOFF_SECONDS)
                if self._stopping:
                    return
                try:
                    await self._spawn(index)
                except Exception as exc:
                    log.error("dispatcher worker %d: restart failed: %s", index, exc)

    async def stop(self) -> None:
        """SIGTERM every worker (each drains its in-flight work), wait, then SIGKILL."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        procs = list(self._procs.values())
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self._settings.shutdown_grace_seconds + 10
        for proc in procs:
            await asyncio.to_thread(proc.join, max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("dispatcher worker pid %s did not stop in time; killed", proc.pid)
                proc.kill()
                await asyncio.to_thread(proc.join, 5)
        self._procs.clear()
