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


class Permutation:
    """A keyed, millisecond-tweaked 4-round Feistel permutation of 22-bit values.

    Round ``r`` maps the 11-bit half ``x`` to ``F[r][x ^ tweak_r(ms)]`` where
    ``F[r]`` is a secret random function (a 2048-entry table expanded from the
    cluster key with SHAKE-256) and ``tweak_r(ms)`` xors secret table entries
    picked by the millisecond's 11-bit digits. Any round functions give a
    permutation, so ids stay unique; the secret tables make neighbours
    unpredictable. Table lookups keep it under a microsecond per id in Python
    (a BLAKE2b per millisecond plus arithmetic rounds cost ~5 µs).
    """

    _TABLES_PER_ROUND = 5  # F, then tweak tables for ms digits 0..3 (41 bits = 4 x 11)

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the permutation key must have at least 16 bytes")
        size = HALF_MASK + 1
        count = FEISTEL_ROUNDS * self._TABLES_PER_ROUND
        stream = hashlib.shake_256(b"click-id-permutation/v1\x00" + key).digest(2 * size * count)
        values = [
            int.from_bytes(stream[i : i + 2], "little") & HALF_MASK
            for i in range(0, len(stream), 2)
        ]
        tables = [values[t * size : (t + 1) * size] for t in range(count)]
        per_round = [tables[r * 5 : r * 5 + 5] for r in range(FEISTEL_ROUNDS)]
        self._f = tuple(tuple(t[0]) for t in per_round)
        self._low = tuple(tuple(t[1]) for t in per_round)
        self._high_tables = tuple((t[2], t[3], t[4]) for t in per_round)
        self._high_digits = -1
        self._high: tuple[int, ...] = (0,) * FEISTEL_ROUNDS
        self._tweak_ms = -1
        self._tweak = (0, 0, 0, 0)

    def _tweaks(self, ms: int) -> tuple[int, int, int, int]:
        high_digits = ms >> HALF_BITS
        if high_digits != self._high_digits:
            # Changes every ~2 s: the contribution of ms digits 1..3, cached.
            d1, d2, d3 = (
                high_digits & HALF_MASK,
                (high_digits >> HALF_BITS) & HALF_MASK,
                (high_digits >> (2 * HALF_BITS)) & HALF_MASK,
            )
            self._high = tuple(b[d1] ^ c[d2] ^ d[d3] for b, c, d in self._high_tables)
            self._high_digits = high_digits
        low = ms & HALF_MASK
        h0, h1, h2, h3 = self._high
        l0, l1, l2, l3 = self._low
        return l0[low] ^ h0, l1[low] ^ h1, l2[low] ^ h2, l3[low] ^ h3

    def forward(self, ms: int, value: int) -> int:
        if ms != self._tweak_ms:  # busy processes issue many ids per millisecond
            self._tweak_ms = ms
            self._tweak = self._tweaks(ms)
        t0, t1, t2, t3 = self._tweak
        f0, f1, f2, f3 = self._f
        left, right = value >> HALF_BITS, value & HALF_MASK
        left ^= f0[right ^ t0]
        right ^= f1[left ^ t1]
        left ^= f2[right ^ t2]
        right ^= f3[left ^ t3]
        return (left << HALF_BITS) | right

    def inverse(self, ms: int, value: int) -> int:
        t0, t1, t2, t3 = self._tweaks(ms)
        f0, f1, f2, f3 = self._f
        left, right = value >> HALF_BITS, value & HALF_MASK
        right ^= f3[left ^ t3]
        left ^= f2[right ^ t2]
        right ^= f1[left ^ t1]
        left ^= f0[right ^ t0]
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
