"""Per-target-host fairness: a concurrency cap and a circuit breaker.

One dead host must not slow anyone else. The cap bounds how many sends one host
can hold at once; the breaker stops sending to a host after N consecutive
failures for a cool-down (its messages move on to their next retry tier
without a request), then lets a single probe through (half-open).
"""

from __future__ import annotations

import asyncio
import logging
import time
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
    """At most ``per_host`` concurrent sends to one host."""

    def __init__(self, per_host: int) -> None:
        self.per_host = per_host
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = {}

    @asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        semaphore = self._slots.get(host)
        if semaphore is None:
            semaphore = self._slots[host] = asyncio.Semaphore(self.per_host)
        self._users[host] = self._users.get(host, 0) + 1
        try:
            async with semaphore:
                yield
        finally:
            self._users[host] -= 1
            if self._users[host] == 0:  # forget idle hosts
                del self._users[host]
                del self._slots[host]
