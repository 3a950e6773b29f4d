"""Per-target-host fairness: a concurrency cap and a circuit breaker.

One dead host must not slow anyone else. The cap bounds how many sends one host
can hold at once; the breaker stops sending to a host after N consecutive
failures for a cool-down (its messages move on to their next retry tier
without a request), then lets a single probe through (half-open).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class _HostState:
    failures: int = 0
    open_until: float = 0.0
    probing: bool = False


class CircuitBreakers:
    def __init__(self, threshold: int, cooldown_seconds: float) -> None:
        self.threshold = threshold
        self.cooldown_seconds = cooldown_seconds
        self._hosts: dict[str, _HostState] = {}
        self.opened_total = 0
        self.short_circuited_total = 0

    def allow(self, host: str) -> bool:
        """May a request go to ``host`` now? Counts a short-circuit when not."""
        state = self._hosts.get(host)
        if state is None or state.failures < self.threshold:
            return True
        now = time.monotonic()
        if now >= state.open_until:
            # Half-open: one probe; if it never reports back, another after a cool-down.
            state.probing = True
            state.open_until = now + self.cooldown_seconds
            return True
        self.short_circuited_total += 1
        return False

    def record(self, host: str, *, failed: bool) -> None:
        state = self._hosts.get(host)
        if not failed:
            if state is not None:
                if state.failures >= self.threshold:
                    log.info("circuit closed for host %s", host)
                del self._hosts[host]
            return
        if state is None:
            state = self._hosts[host] = _HostState()
        state.failures += 1
        was_probe, state.probing = state.probing, False
        if state.failures == self.threshold or was_probe:
            state.open_until = time.monotonic() + self.cooldown_seconds
            self.opened_total += 1
            log.warning(
                "circuit open for host %s after %d consecutive failures; paused %.1fs",
                host,
                state.failures,
                self.cooldown_seconds,
            )

    def open_hosts(self) -> list[str]:
        now = time.monotonic()
        return sorted(
            h for h, s in self._hosts.items() if s.failures >= self.threshold and s.open_until > now
        )


class HostLimiter:
    """At most ``per_host`` concurrent sends to one host.

    A counter and a FIFO of waiters per host (``asyncio.Semaphore.locked()`` walks
    all its waiters, which at hundreds of queued postbacks costs more than the
    send). A released slot is handed straight to the next waiter.
    """

    def __init__(self, per_host: int) -> None:
        self.per_host = per_host
        self._active: dict[str, int] = {}
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}

    async def acquire(self, host: str) -> None:
        active = self._active.get(host, 0)
        if active < self.per_host and host not in self._waiters:
            self._active[host] = active + 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiters.get(host)
        if queue is None:
            queue = self._waiters[host] = deque()
        queue.append(waiter)
        try:
            await waiter  # the slot is handed over by ``release``
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(host)  # handed over just as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    queue.remove(waiter)
                if not queue and self._waiters.get(host) is queue:
                    del self._waiters[host]
            raise

    def release(self, host: str) -> None:
        queue = self._waiters.get(host)
        if queue is not None:
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    if not queue:
                        del self._waiters[host]
                    waiter.set_result(None)  # the slot moves to this waiter
                    return
            del self._waiters[host]
        active = self._active[host] - 1
        if active:
            self._active[host] = active
        else:
            del self._active[host]  # forget idle hosts

    @asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        await self.acquire(host)
        try:
            yield
        finally:
            self.release(host)
