"""Per-target fairness: a per-host concurrency cap and a two-level circuit breaker.

One dead target must not slow anyone else. The cap bounds how many sends one
host can hold at once. The breaker pauses a target after N consecutive
failures for a cool-down, then lets a single probe through (half-open):

- an *endpoint* (scheme, host, port and path) is paused for HTTP-level failures
  (5xx, 429, a timeout after the request went out): many publishers share one
  hosted tracker, and one publisher's broken path must not pause the paths the
  same host answers fine;
- a *host* is paused for connection-level failures (refused, connect timeout,
  DNS, TLS): nothing on it can be reached.

A paused target's messages are deferred by the consumer (to a retry tier, no
attempt used); the breaker itself only answers "may I send now".
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)

# ``SendResult.error_class`` values that mean the host could not be reached at all.
CONNECTION_LEVEL_ERRORS = frozenset(
    {
        "ConnectionError",
        "ConnectionRefusedError",
        "ConnectTimeout",
        "DNSError",
        "gaierror",
        "SSLError",
        "TLSError",
        "SSLCertVerificationError",
        "ClientConnectorError",
        "ClientConnectorCertificateError",
        "ClientSSLError",
    }
)


class Failure(enum.Enum):
    """What a failed send says about its target."""

    ENDPOINT = "endpoint"  # the host answered (or took the request) but this path failed
    HOST = "host"  # the host could not be reached


def endpoint_key(url: str) -> str:
    """``scheme://host:port/path`` of a URL: the unit the HTTP-level breaker pauses."""
    head = url.partition("?")[0]
    return head.partition("#")[0] if "#" in head else head


@dataclass
class _Circuit:
    failures: int = 0
    open_until: float = 0.0
    probing: bool = False


class CircuitBreakers:
    def __init__(
        self,
        threshold: int,
        cooldown_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooldown_seconds = cooldown_seconds
        self._clock = clock
        self._hosts: dict[str, _Circuit] = {}
        self._endpoints: dict[str, _Circuit] = {}
        self.opened_total = 0
        self.short_circuited_total = 0

    def allow(self, endpoint: str, host: str) -> bool:
        """May a request go to ``endpoint`` on ``host`` now? Counts a short-circuit when not.

        When a pause is over this grants the one probe (half-open).
        """
        host_circuit = self._hosts.get(host)
        endpoint_circuit = self._endpoints.get(endpoint)
        if host_circuit is None and endpoint_circuit is None:
            return True  # the common case: nothing known against either
        now = self._clock()
        circuits = [c for c in (host_circuit, endpoint_circuit) if c is not None]
        tripped = [c for c in circuits if c.failures >= self.threshold]
        if any(now < c.open_until for c in tripped):
            self.short_circuited_total += 1
            return False
        for circuit in tripped:
            # Half-open: one probe; if it never reports back, another after a cool-down.
            circuit.probing = True
            circuit.open_until = now + self.cooldown_seconds
        return True

    def is_paused(self, endpoint: str, host: str) -> bool:
        """Is either paused right now (no probe granted)? Counts a short-circuit when so."""
        if not self._hosts and not self._endpoints:
            return False
        if self.paused_for(endpoint, host) > 0:
            self.short_circuited_total += 1
            return True
        return False

    def paused_for(self, endpoint: str, host: str) -> float:
        """Seconds until ``allow`` may say yes again (0 when it would now)."""
        now = self._clock()
        remaining = 0.0
        for circuit in (self._hosts.get(host), self._endpoints.get(endpoint)):
            if circuit is not None and circuit.failures >= self.threshold:
                remaining = max(remaining, circuit.open_until - now)
        return remaining

    def record(self, endpoint: str, host: str, failure: Failure | None) -> None:
        """The result of a request that was sent: ``None`` when the target answered fine."""
        if failure is None:
            self._close(self._endpoints, endpoint, "endpoint")
            self._close(self._hosts, host, "host")
        elif failure is Failure.ENDPOINT:
            self._close(self._hosts, host, "host")  # it took the request: reachable
            self._fail(self._endpoints, endpoint, "endpoint")
        else:
            self._fail(self._hosts, host, "host")

    def _close(self, circuits: dict[str, _Circuit], key: str, kind: str) -> None:
        circuit = circuits.pop(key, None)
        if circuit is not None and circuit.failures >= self.threshold:
            log.info("circuit closed for %s %s", kind, key)

    def _fail(self, circuits: dict[str, _Circuit], key: str, kind: str) -> None:
        circuit = circuits.get(key)
        if circuit is None:
            circuit = circuits[key] = _Circuit()
        circuit.failures += 1
        was_probe, circuit.probing = circuit.probing, False
        if circuit.failures == self.threshold or was_probe:
            circuit.open_until = self._clock() + self.cooldown_seconds
            self.opened_total += 1
            log.warning(
                "circuit open for %s %s after %d consecutive failures; paused %.1fs",
                kind,
                key,
                circuit.failures,
                self.cooldown_seconds,
            )

    def open_hosts(self) -> list[str]:
        """Paused hosts and endpoints (for /metrics and /readyz)."""
        now = self._clock()
        paused = [
            key
            for circuits in (self._hosts, self._endpoints)
            for key, c in circuits.items()
            if c.failures >= self.threshold and c.open_until > now
        ]
        return sorted(k.replace("\\", "%5C").replace('"', "%22").replace("\n", "") for k in paused)


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
