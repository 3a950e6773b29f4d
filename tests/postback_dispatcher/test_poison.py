"""Poison over AMQP: every kind of bad message ends in ``dead_letters`` with its reason.

A message that is not a valid conversion event must be dead-lettered at once
(reason ``poison`` or ``oversized`` and the detail), never retried, never allowed
to fail the claim batch it would have joined, and the archiver must be able to
store it; a good message published after all of them is still delivered.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest

from postback_core.contracts import MAX_EVENT_BYTES
from postback_core.enums import DeadLetterReason
from postback_core.topology import (
    DEAD_EXCHANGE,
    HEADER_ATTEMPT,
    HEADER_DEAD_REASON,
    HEADER_HISTORY,
    HEADER_SEQUENCE,
    HEADER_TRIGGER,
    declare_topology,
)
from postback_dispatcher.archive import HEADER_URL_MASKED
from postback_dispatcher.batching import ClaimBatcher
from postback_dispatcher.repository import ClaimRequest
from tests.postback_dispatcher.conftest import (
    DispatcherHandle,
    attempt_rows,
    create_publisher_with_settings,
    dead_letter_row,
    delivery_row,
    make_event,
)
from tests.support.polling import wait_for
from tests.support.servers import Receiver

Mutation = Callable[[dict[str, Any]], bytes]


def _with(**changes: Any) -> Mutation:
    def build(raw: dict[str, Any]) -> bytes:
        return json.dumps({**raw, **changes}).encode()  # orjson won't write ints > 64 bits

    return build


def _without(*names: str) -> Mutation:
    def build(raw: dict[str, Any]) -> bytes:
        return orjson.dumps({k: v for k, v in raw.items() if k not in names})

    return build


def _invalid_utf8(raw: dict[str, Any]) -> bytes:
    return orjson.dumps({**raw, "external_id": "MARK"}).replace(b'"MARK"', b'"\xff\xfe"')


def _huge(raw: dict[str, Any]) -> bytes:
    return orjson.dumps({**raw, "padding": "x" * (MAX_EVENT_BYTES + 1)})


def _deeply_nested(raw: dict[str, Any]) -> bytes:
    return orjson.dumps(raw)[:-1] + b', "deep": ' + b"[" * 5000 + b"]" * 5000 + b"}"


def _nested_where_a_value_belongs(raw: dict[str, Any]) -> bytes:
    nested: Any = "x"
    for _ in range(200):
        nested = {"a": nested}
    return orjson.dumps({**raw, "sub_ids": nested})


# kind -> (body from a valid event's JSON, reason, detail in last_error)
POISON: dict[str, tuple[Mutation, DeadLetterReason, str]] = {
    "not json": (lambda raw: b"{not json " + raw["event_id"].encode(), "poison", "malformed JSON"),
    "NUL bytes outside strings": (
        lambda raw: b"\x00\x00" + orjson.dumps(raw),
        "poison",
        "malformed JSON",
    ),
    "json array": (lambda raw: orjson.dumps([raw]), "poison", "JSON object"),
    "wrong schema_version": (_with(schema_version=99), "poison", "unsupported schema_version"),
    "schema_version as text": (_with(schema_version="1"), "poison", "schema_version"),
    "missing fields": (_without("conversion_id", "payout"), "poison", "conversion_id"),
    "wrong type": (_with(click_id="not a number"), "poison", "click_id"),
    "id above int64": (_with(conversion_id=2**63), "poison", "conversion_id"),
    "id above uint64": (_with(publisher_id=2**64 + 1), "poison", "publisher_id"),
    "id zero": (_with(conversion_id=0), "poison", "conversion_id"),
    "id negative": (_with(publisher_id=-3), "poison", "publisher_id"),
    "negative payout": (_with(payout="-1.00"), "poison", "payout"),
    "payout too many digits": (_with(payout="123456789.00"), "poison", "payout"),
    "payout too many decimals": (_with(payout="0.12345"), "poison", "payout"),
    "payout NaN": (_with(payout="NaN"), "poison", "payout"),
    "payout Infinity": (_with(payout="Infinity"), "poison", "payout"),
    "huge message": (_huge, "oversized", "exceeds"),
    "deeply nested json": (_deeply_nested, "poison", "malformed JSON"),
    "nested object for a value": (_nested_where_a_value_belongs, "poison", "sub_ids"),
    "invalid utf-8": (_invalid_utf8, "poison", "malformed JSON"),
    "NUL in a string": (_with(external_id="a\x00b"), "poison", "external_id"),
    "NUL in a sub id": (_with(sub_ids={"sub1": "\x00"}), "poison", "sub_ids.sub1"),
    "string too long": (_with(txid="t" * 5000), "poison", "txid"),
    "bad uuid": (_with(event_id="not-a-uuid"), "poison", "event_id"),
    "bad timestamp": (_with(occurred_at="2026-13-45T99:00:00Z"), "poison", "occurred_at"),
}


def _key(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


@pytest.fixture(scope="module")
async def published_poison(dispatcher: DispatcherHandle, pg: asyncpg.Pool) -> dict[str, bytes]:
    """Every poison kind published once (all first, so the matrix costs one wait)."""
    bodies: dict[str, bytes] = {}
    publisher_id = await create_publisher_with_settings(pg, None)
    for kind, (mutate, _, _) in POISON.items():
        raw = orjson.loads(make_event(publisher_id).to_json())
        bodies[kind] = mutate(raw)
    await asyncio.gather(*(dispatcher.publish(body) for body in bodies.values()))
    return bodies


@pytest.mark.parametrize("kind", list(POISON))
async def test_poison_is_dead_lettered_with_its_reason(
    kind: str, published_poison: dict[str, bytes], pg: asyncpg.Pool
) -> None:
    body = published_poison[kind]
    _, reason, detail = POISON[kind]
    dead = await wait_for(lambda: dead_letter_row(pg, _key(body)), timeout=30, message=kind)
    assert dead["reason"] == reason
    assert detail in dead["last_error"], dead["last_error"]
    assert dead["attempts"] == 0 and dead["event_id"] is None
    if reason == DeadLetterReason.OVERSIZED:
        # Not republished whole: an excerpt of the body, the original's hash as the key.
        assert len(dead["payload"]) <= 1024 and body.startswith(dead["payload"])
    else:
        assert dead["payload"] == body


async def test_a_good_message_after_the_poison_is_delivered(
    published_poison: dict[str, bytes],
    dispatcher: DispatcherHandle,
    pg: asyncpg.Pool,
    receiver: Receiver,
) -> None:
    publisher_id = await create_publisher_with_settings(pg, receiver.base_url + "/after-poison")
    event = make_event(publisher_id)
    await dispatcher.publish(event)
    row = await wait_for(
        lambda: _delivered(pg, event.conversion_id), timeout=30, message="good message"
    )
    assert row["attempts"] == 1
    assert len(receiver.matching("/after-poison")) == 1


async def test_out_of_range_sequence_header_is_poison_not_a_failed_claim(
    dispatcher: DispatcherHandle, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    publisher_id = await create_publisher_with_settings(pg, receiver.base_url + "/seq")
    event = make_event(publisher_id)
    await dispatcher.publish(event, {HEADER_SEQUENCE: 2**40})
    dead = await wait_for(lambda: dead_letter_row(pg, str(event.event_id)), timeout=30)
    assert dead["reason"] == "poison" and HEADER_SEQUENCE in dead["last_error"]
    assert dead["sequence"] == 0  # the stored value fits its column
    assert await delivery_row(pg, event.conversion_id) is None
    assert receiver.matching("/seq") == []


async def test_hostile_headers_on_a_good_event_do_not_stop_its_delivery(
    dispatcher: DispatcherHandle, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    publisher_id = await create_publisher_with_settings(pg, receiver.base_url + "/hdr")
    event = make_event(publisher_id)
    await dispatcher.publish(
        event, {HEADER_TRIGGER: "t" * 5000, HEADER_HISTORY: "{not json", HEADER_ATTEMPT: "x"}
    )
    row = await wait_for(lambda: _delivered(pg, event.conversion_id), timeout=30)
    assert row["attempts"] == 1
    (attempt,) = await attempt_rows(pg, event.conversion_id)
    assert attempt["trigger"] == "first" and attempt["outcome"] == "delivered"


async def test_hostile_attempt_header_on_a_skipped_event_is_recorded_once(
    dispatcher: DispatcherHandle, pg: asyncpg.Pool
) -> None:
    publisher_id = await create_publisher_with_settings(pg, None)
    event = make_event(publisher_id)
    await dispatcher.publish(event, {HEADER_ATTEMPT: 2**40})
    (attempt,) = await wait_for(lambda: attempt_rows(pg, event.conversion_id), timeout=30)
    assert attempt["outcome"] == "skipped" and attempt["attempt_no"] == 2**31 - 1
    row = await delivery_row(pg, event.conversion_id)
    assert row is not None and row["status"] == "skipped"


async def _delivered(pg: asyncpg.Pool, conversion_id: int) -> Any:
    row = await delivery_row(pg, conversion_id)
    return row if row is not None and row["status"] == "delivered" else None


async def test_one_bad_claim_fails_alone_not_its_batch(pg: asyncpg.Pool) -> None:
    """Claims that reach SQL with an out-of-range value fail alone; batch mates are claimed."""
    batcher = ClaimBatcher(pg, max_attempts=3)
    good = [make_event(1) for _ in range(5)]
    requests = [ClaimRequest(e.conversion_id, e.event_id, e.publisher_id, 0) for e in good]
    bad = ClaimRequest(2**63, good[0].event_id, 1, 0)
    results = await asyncio.gather(
        *(batcher.claim(r) for r in [*requests[:2], bad, *requests[2:]]), return_exceptions=True
    )
    assert isinstance(results[2], asyncpg.DataError)
    claims = [r for i, r in enumerate(results) if i != 2]
    assert [getattr(c, "kind", c) for c in claims] == ["send"] * 5
    for event in good:
        row = await delivery_row(pg, event.conversion_id)
        assert row is not None and row["attempts"] == 1


async def test_archiver_stores_what_it_cannot_read_and_does_not_loop(
    dispatcher: DispatcherHandle, pg: asyncpg.Pool
) -> None:
    """Dead letters from anywhere (other tools, the broker) with values no column takes."""
    event = make_event(1)
    cases: dict[str, tuple[bytes, dict[str, Any]]] = {
        "nul everywhere": (
            b"\x00raw\x00" + event.event_id.bytes,
            {
                HEADER_DEAD_REASON: "poison",
                HEADER_HISTORY: orjson.dumps(
                    {"last_error": "bad\x00byte", "last_status": 2**40, "x": "\x00"}
                ).decode(),
                HEADER_URL_MASKED: "http://h/\x00",
                HEADER_SEQUENCE: 2**40,
            },
        ),
        "unknown long reason": (b"reason" + event.event_id.bytes, {HEADER_DEAD_REASON: "r" * 300}),
        "huge body": (b"{" + b"x" * (3 * MAX_EVENT_BYTES) + event.event_id.bytes, {}),
        "broker rejected": (
            b"rejected" + event.event_id.bytes,
            {"x-first-death-reason": "rejected"},
        ),
    }
    connection = await aio_pika.connect(dispatcher.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        topology = await declare_topology(channel, (0.3, 0.6))
        assert topology.dead.name == DEAD_EXCHANGE
        for body, headers in cases.values():
            await topology.dead.publish(aio_pika.Message(body, headers=headers), routing_key="")
    finally:
        await connection.close()

    rows = {}
    for name, (body, _) in cases.items():
        rows[name] = await wait_for(
            lambda body=body: dead_letter_row(pg, _key(body)), timeout=30, message=name
        )
    nul = rows["nul everywhere"]
    assert nul["reason"] == "poison" and nul["sequence"] == 0 and nul["last_status"] is None
    assert "\x00" not in nul["last_error"] and "\x00" not in nul["url_masked"]
    assert nul["payload"] == cases["nul everywhere"][0]
    assert rows["unknown long reason"]["reason"] == DeadLetterReason.UNKNOWN
    assert rows["broker rejected"]["reason"] == DeadLetterReason.BROKER_REJECTED
    huge = rows["huge body"]
    assert len(huge["payload"]) == MAX_EVENT_BYTES
    assert orjson.loads(huge["history"])["body_bytes"] == len(cases["huge body"][0])
