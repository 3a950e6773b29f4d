"""Click ids: 64-bit, unique across gateway processes, time-ordered but not guessable.

Layout (63 bits, so the id is always a positive signed BIGINT)::

    | 41 bits: ms since CLICK_ID_EPOCH | 22 bits: P_ms(node:10 | sequence:12) |

The creation millisecond sits in the high bits, so ``created_at`` (the
partition key of ``clicks``) is derived from the id alone and a lookup by id
touches one daily partition. The low 22 bits are a keyed permutation of the
process's leased node number and its per-millisecond sequence; the
permutation is tweaked by the millisecond, so two ids from the same process
share no visible pattern and a neighbour of a known id can't be guessed.
Uniqueness needs no coordination per click: (ms, node, sequence) is unique
while a node is leased to one process, and a permutation keeps it unique.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg

from click_gateway.clicks import repository

log = logging.getLogger(__name__)

CLICK_ID_EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
CLICK_ID_EPOCH_MS = int(CLICK_ID_EPOCH.timestamp() * 1000)
TIME_BITS = 41
NODE_BITS = 10
SEQUENCE_BITS = 12
LOW_BITS = NODE_BITS + SEQUENCE_BITS  # 22
HALF_BITS = LOW_BITS // 2  # 11
HALF_MASK = (1 << HALF_BITS) - 1
LOW_MASK = (1 << LOW_BITS) - 1
MAX_NODE = (1 << NODE_BITS) - 1
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1
MAX_MS = (1 << TIME_BITS) - 1
FEISTEL_ROUNDS = 4
KEY_NAME = "click_id_permutation_key"
KEY_BYTES = 32

# Node leases: long enough to survive a database hiccup, renewed well before expiry.
LEASE_SECONDS = 60.0
RENEW_EVERY_SECONDS = 10.0
# A released node stays unusable this long, so a successor whose clock is a bit
# behind ours can't re-issue the ids of our last milliseconds.
RELEASE_COOLDOWN_SECONDS = 5.0
# Stop issuing ids this long before the lease could have expired in the database.
LEASE_SAFETY_MARGIN_SECONDS = 10.0


def click_id_ms(click_id: int) -> int:
    """Milliseconds since the Unix epoch at which the id was issued."""
    return (click_id >> LOW_BITS) + CLICK_ID_EPOCH_MS


def click_created_at(click_id: int) -> datetime:
    """The click's ``created_at`` (its partition key), recovered from the id."""
    return CLICK_ID_EPOCH + timedelta(milliseconds=click_id >> LOW_BITS)


def is_plausible_click_id(click_id: int) -> bool:
    return 0 < click_id < (1 << (TIME_BITS + LOW_BITS))


def _mix(value: int) -> int:
    """A cheap 32-bit avalanche (murmur3 finaliser); keyed by xor before the call."""
    value = (value * 0x9E3779B1) & 0xFFFFFFFF
    value ^= value >> 16
    value = (value * 0x85EBCA6B) & 0xFFFFFFFF
    value ^= value >> 13
    value = (value * 0xC2B2AE35) & 0xFFFFFFFF
    value ^= value >> 16
    return value


class Permutation:
    """A keyed, millisecond-tweaked Feistel permutation of 22-bit values.

    One BLAKE2b call per millisecond derives the round keys (cached while the
    millisecond lasts), so the per-id cost is a few integer operations.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the permutation key must have at least 16 bytes")
        self._key = key[:64]
        self._ms = -1
        self._round_keys: tuple[int, ...] = ()

    def _keys_for(self, ms: int) -> tuple[int, ...]:
        if ms != self._ms:
            digest = hashlib.blake2b(
                ms.to_bytes(8, "big"), key=self._key, digest_size=4 * FEISTEL_ROUNDS
            ).digest()
            self._round_keys = tuple(
                int.from_bytes(digest[4 * r : 4 * r + 4], "big") for r in range(FEISTEL_ROUNDS)
            )
            self._ms = ms
        return self._round_keys

    def forward(self, ms: int, value: int) -> int:
        left, right = value >> HALF_BITS, value & HALF_MASK
        for round_key in self._round_keys if ms == self._ms else self._keys_for(ms):
            # _mix(right ^ round_key), inlined: this runs four times per click.
            x = ((right ^ round_key) * 0x9E3779B1) & 0xFFFFFFFF
            x ^= x >> 16
            x = (x * 0x85EBCA6B) & 0xFFFFFFFF
            x ^= x >> 13
            x = (x * 0xC2B2AE35) & 0xFFFFFFFF
            x ^= x >> 16
            left, right = right, left ^ (x & HALF_MASK)
        return (left << HALF_BITS) | right

    def inverse(self, ms: int, value: int) -> int:
        left, right = value >> HALF_BITS, value & HALF_MASK
        for round_key in reversed(self._keys_for(ms)):
            left, right = right ^ (_mix(left ^ round_key) & HALF_MASK), left
        return (left << HALF_BITS) | right


class ClickIdGenerator:
    """Issues ids for one node. Not thread-safe: one event loop owns it."""

    def __init__(
        self,
        node: int,
        key: bytes,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.permutation = Permutation(key)
        self._clock_ns = clock_ns
        self._node = 0
        self._last_ms = -1
        self._sequence = 0
        self.node = node

    @property
    def node(self) -> int:
        return self._node

    @node.setter
    def node(self, node: int) -> None:
        if not 0 <= node <= MAX_NODE:
            raise ValueError(f"node must be within 0..{MAX_NODE}")
        self._node = node
        # A new node starts a fresh sequence space: every (ms, node, seq) is new.
        self._last_ms = -1
        self._sequence = 0

    def _now_ms(self) -> int:
        return self._clock_ns() // 1_000_000 - CLICK_ID_EPOCH_MS

    def next_id(self) -> int:
        now = self._now_ms()
        if now > self._last_ms:
            self._last_ms = now
            self._sequence = 0
        else:
            # Same millisecond, or the clock went backwards: never reuse a
            # (ms, seq) pair — keep counting in the last millisecond we used.
            self._sequence += 1
            if self._sequence > MAX_SEQUENCE:
                self._next_millisecond(now)
        ms = self._last_ms
        if ms > MAX_MS or ms < 0:
            raise OverflowError("clock outside the click-id time range")
        low = self.permutation.forward(ms, (self._node << SEQUENCE_BITS) | self._sequence)
        return (ms << LOW_BITS) | low

    def _next_millisecond(self, now: int) -> None:
        """4096 ids in one ms: wait for the clock (≤ 1 ms) or, if it is behind, borrow."""
        if now == self._last_ms:
            while now <= self._last_ms:
                now = self._now_ms()
            self._last_ms = now
        else:
            # The clock is behind our last ms: advance logically; the real clock
            # catches up later and ids stay unique and increasing meanwhile.
            self._last_ms += 1
        self._sequence = 0

    def decode(self, click_id: int) -> tuple[int, int, int]:
        """(ms since epoch, node, sequence) — for tests and incident analysis."""
        ms = click_id >> LOW_BITS
        raw = self.permutation.inverse(ms, click_id & LOW_MASK)
        return ms, raw >> SEQUENCE_BITS, raw & MAX_SEQUENCE


def holder_name() -> str:
    return f"{socket.gethostname()[:120]}:{os.getpid()}:{os.urandom(4).hex()}"


class NodeLease:
    """Leases a node number from ``id_nodes`` and keeps the generator on a leased node.

    The lease is renewed in the background; if it was lost (e.g. the process
    was paused past its expiry and another took the node) a new node is leased
    before more ids are issued under the old one.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.holder = holder_name()
        self.node: int | None = None
        self.generator: ClickIdGenerator | None = None
        # Monotonic deadline after which our lease may have expired in the
        # database (we couldn't renew it): ids must not be issued past it, or
        # another process that took the node could issue the same ones.
        self.valid_until = 0.0
        self._task: asyncio.Task[None] | None = None

    def is_valid(self) -> bool:
        return time.monotonic() < self.valid_until

    def _renewed_at(self, monotonic: float) -> None:
        self.valid_until = monotonic + LEASE_SECONDS - LEASE_SAFETY_MARGIN_SECONDS

    async def start(self) -> ClickIdGenerator:
        key = await repository.cluster_secret(self.pool, KEY_NAME, os.urandom(KEY_BYTES))
        node = await self._lease()
        self.generator = ClickIdGenerator(node, key)
        self._task = asyncio.create_task(self._renew_forever(), name="click-id-lease")
        return self.generator

    async def _lease(self) -> int:
        for _ in range(20):
            asked_at = time.monotonic()
            node = await repository.lease_id_node(self.pool, self.holder, MAX_NODE, LEASE_SECONDS)
            if node is not None:
                self._renewed_at(asked_at)
                self.node = node
                log.info("leased click-id node %d as %s", node, self.holder)
                return node
        raise RuntimeError("no free click-id node (all 1024 leased?)")

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY_SECONDS)
            try:
                assert self.node is not None
                asked_at = time.monotonic()
                kept = await repository.renew_id_node(
                    self.pool, self.node, self.holder, LEASE_SECONDS
                )
                if kept:
                    self._renewed_at(asked_at)
                else:
                    log.error("click-id node %d lease was lost; leasing a new node", self.node)
                    node = await self._lease()
                    if self.generator is not None:
                        self.generator.node = node
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not renew the click-id node lease; retrying")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.node is not None:
            try:
                await repository.release_id_node(
                    self.pool, self.node, self.holder, RELEASE_COOLDOWN_SECONDS
                )
            except Exception:
                log.warning("could not release click-id node %d; it expires on its own", self.node)
            self.node = None
