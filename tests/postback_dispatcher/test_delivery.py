"""End-to-end delivery through the shared dispatcher: real broker, database, receivers.

Shared dispatcher settings: retry delays 0.3 s and 0.6 s (3 attempts at most),
private targets allowed, no settings cache.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from postback_core.topology import HEADER_ATTEMPT, HEADER_SEQUENCE, HEADER_TRIGGER
from postback_dispatcher.signing import HEADER_SIGNATURE, HEADER_TIMESTAMP, verify_signature
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

TOKEN = "tok_s3cr3t_value_42"


def _count(receiver: Receiver, path: str, n: int):
    async def probe() -> bool:
        return len(receiver.matching(path)) >= n

    return probe


async def _status(pg: asyncpg.Pool, conversion_id: int, status: str) -> Any:
    row = await delivery_row(pg, conversion_id)
    return row if row is not None and row["status"] == status else None


async def _attempts(pg: asyncpg.Pool, conversion_id: int, n: int) -> list[asyncpg.Record]:
    rows = await attempt_rows(pg, conversion_id)
    return rows if len(rows) >= n else []


async def test_postback_arrives_signed_with_rendered_macros(
    dispatcher: DispatcherHandle, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    publisher_id = await create_publisher_with_settings(
        pg,
        receiver.base_url + "/pb?cid={external_id}&p={payout}&t={security_token}&x={unknown}",
        TOKEN,
    )
    event = make_event(publisher_id, external_id="a b&c=d/e")
    await dispatcher.publish(event)
    await wait_for(_count(receiver, "/pb", 1), message="postback")

    request = receiver.requests[0]
    assert request.query["cid"] == "a b&c=d/e"
    assert request.query["p"] == "0.50"
    assert request.query["x"] == "{unknown}"
    assert request.headers["X-Postback-Id"] == str(event.event_id)
    assert request.headers["User-Agent"].startswith("MaxPPI-Postback/")
    # The receiver verifies over the URL exactly as it arrived.
    full_url = f"http://{request.headers['Host']}{request.raw_url}"
    assert verify_signature(
        TOKEN, full_url, request.headers[HEADER_TIMESTAMP], request.headers[HEADER_SIGNATURE]
    )
    assert "%2F" in request.raw_url  # encoded bytes were signed and sent as they are

    row = await wait_for(lambda: _status(pg, event.conversion_id, "delivered"))
    assert row["attempts"] == 1 and row["last_status"] == 200 and row["delivered_at"]
    (attempt,) = await wait_for(lambda: _attempts(pg, event.conversion_id, 1))
    assert attempt["outcome"] == "delivered" and attempt["trigger"] == "first"
    assert attempt["http_status"] == 200 and attempt["attempt_no"] == 1
    assert TOKEN not in attempt["url_masked"] and "t=***" in attempt["url_masked"]


async def test_retry_then_success(
    dispatcher: DispatcherHandle, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    answers = iter([503, 500])
    receiver.responder = lambda request: next(answers, 200)
    publisher_id = await create_publisher_with_settings(pg, receiver.base_url + "/r?c={click_id}")
    event = make_event(publisher_id)
    await dispatcher.publish(event)

    await wait_for(_count(receiver, "/r", 3), message="three attempts")
    times = [r.received_at for r in receiver.requests]
    assert times[1] - times[0] >= 0.25 and times[2] - times[1] >= 0.55  # tiers 0.3 s, 0.6 s
    row = await wait_for(lambda: _status(pg, event.conversion_id, "delivered"))
    assert row["attempts"] == 3
    attempts = await wait_for(lambda: _attempts(pg, event.conversion_id, 3))
    assert [(a["attempt_no"], a["trigger"], a["outcome"], a["http_status"]) for a in attempts] == [
        (1, "first", "retry", 503),
        (2, "retry", "retry", 500),
        (3, "retry", "delivered", 200),
    ]
    assert {r.headers["X-Postback-Id"] for r in receiver.requests} == {str(event.event_id)}


async def test_exhaustion_dead_letters_with_history(
    dispatcher: DispatcherHandle, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    receiver.responder = lambda request: 502
    publisher_id = await create_publisher_with_settings(
        pg, receiver.base_url + "/x?c={click_id}&t={security_token}", TOKEN
    )
    event = make_event(publisher_id)
    await dispatcher.publish(event)

    dead = await wait_for(lambda: dead_letter_row(pg, str(event.event_id)), message="dead letter")
    assert len(receiver.matching("/x")) == 3  # 1 + len(delays), never more
    assert dead["reason"] == "exhausted" and dead["state"] == "dead"
    assert dead["attempts"] == 3 and dead["last_status"] == 502
    assert dead["conversion_id"] == event.conversion_id
    assert dead["publisher_id"] == publisher_id
    assert dead["payload"] == event.to_json()
    assert TOKEN not in dead["url_masked"]
    assert dead["first_attempt_at"] < dead["last_attempt_at"]
    history = orjson.loads(dead["history"])
    assert [a["status"] for a in history["attempts"]] == [502, 502, 502]
    assert history["last_error_class"] == "HTTP502"
    row = await wait_for(lambda: _status(pg, event.conversion_id, "dead"))
    assert row["attempts"] == 3
    assert TOKEN not in orjson.dumps(history).decode()


async def test_permanent_4xx_dead_letters_at_once(
    dispatcher: DispatcherHandle, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    receiver.responder = lambda request: 404
    publisher_id = await create_publisher_with_settings(pg, receiver.base_url + "/gone")
    event = make_event(publisher_id)
    await dispatcher.publish(event)

    dead = await wait_for(lambda: dead_letter_row(pg, str(event.event_id)))
    assert dead["reason"] == "permanent_http_4xx" and dead["attempts"] == 1
    assert dead["last_status"] == 404
    assert len(receiver.matching("/gone")) == 1


async def test_invalid_url_dead_letters_as_invalid(
    dispatcher: DispatcherHandle, pg: asyncpg.Pool
) -> None:
    publisher_id = await create_publisher_with_settings(pg, "ftp://files.example/{click_id}")
    event = make_event(publisher_id)
    await dispatcher.publish(event)
    dead = await wait_for(lambda: dead_letter_row(pg, str(event.event_id)))
    assert dead["reason"] == "invalid_url"


async def test_retry_after_picks_a_later_tier(
    dispatcher: DispatcherHandle, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    def responder(request):
        if len(receiver.matching(request.path)) == 1:
            wait = "0.5" if request.path == "/short" else "3600"
            return web.Response(status=429, headers={"Retry-After": wait})
        return web.Response(text="ok")

    receiver.responder = responder
    short_pub = await create_publisher_with_settings(pg, receiver.base_url + "/short")
    long_pub = await create_publisher_with_settings(pg, receiver.base_url + "/long")
    await dispatcher.publish(make_event(short_pub))
    await dispatcher.publish(make_event(long_pub))

    await wait_for(_count(receiver, "/short", 2))
    await wait_for(_count(receiver, "/long", 2), message="capped Retry-After")
    short = [r.received_at for r in receiver.matching("/short")]
    # Without Retry-After the first tier is 0.3 s; 0.5 s asks for the 0.6 s tier.
    assert short[1] - short[0] >= 0.55
    long = [r.received_at for r in receiver.matching("/long")]
    assert long[1] - long[0] < 5  # an hour is capped at the longest tier


async def test_poison_messages_are_dead_lettered_and_consumer_keeps_running(
    dispatcher: DispatcherHandle, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    bodies = [
        b"{not json",
        orjson.dumps({"schema_version": 99, "conversion_id": 1}),
        orjson.dumps({"schema_version": 1, "event_type": "conversion.created"}),
    ]
    for body in bodies:
        await dispatcher.publish(body)

    for body in bodies:
        key = "sha256:" + hashlib.sha256(body).hexdigest()
        dead = await wait_for(functools.partial(dead_letter_row, pg, key), message="poison row")
        assert dead["reason"] == "poison" and dead["payload"] == body
    assert (
        "unsupported schema_version"
        in (await dead_letter_row(pg, "sha256:" + hashlib.sha256(bodies[1]).hexdigest()))[
            "last_error"
        ]
    )

    publisher_id = await create_publisher_with_settings(pg, receiver.base_url + "/after")
    await dispatcher.publish(make_event(publisher_id))
    await wait_for(_count(receiver, "/after", 1), message="delivery after poison")


async def test_publisher_without_settings_is_skipped(
    dispatcher: DispatcherHandle, pg: asyncpg.Pool
) -> None:
    publisher_id = await create_publisher_with_settings(pg, None)
    event = make_event(publisher_id)
    await dispatcher.publish(event)
    row = await wait_for(lambda: _status(pg, event.conversion_id, "skipped"))
    assert row["attempts"] == 0
    (attempt,) = await wait_for(lambda: _attempts(pg, event.conversion_id, 1))
    assert attempt["outcome"] == "skipped"
    assert await dead_letter_row(pg, str(event.event_id)) is None


async def test_redelivered_copy_after_success_is_not_sent_again(
    dispatcher: DispatcherHandle, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    publisher_id = await create_publisher_with_settings(pg, receiver.base_url + "/once")
    event = make_event(publisher_id)
    await dispatcher.publish(event)
    await wait_for(lambda: _status(pg, event.conversion_id, "delivered"))
    await dispatcher.publish(event)
    await dispatcher.publish(event, {HEADER_TRIGGER: "retry", HEADER_ATTEMPT: 1})
    # A later, different event proves the copies were consumed (one queue, in order).
    marker = make_event(publisher_id)
    await dispatcher.publish(marker)
    await wait_for(lambda: _status(pg, marker.conversion_id, "delivered"))
    assert len(receiver.matching("/once")) == 2  # the event once, the marker once
    row = await delivery_row(pg, event.conversion_id)
    assert row is not None and row["attempts"] == 1


async def test_attempt_limit_holds_across_redelivery(
    dispatcher: DispatcherHandle, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    """As after a crash: the database already counts attempts the broker doesn't know of."""
    receiver.responder = lambda request: 503
    publisher_id = await create_publisher_with_settings(pg, receiver.base_url + "/crash")
    spent = make_event(publisher_id)  # all 3 attempts made before the crash
    last_one = make_event(publisher_id)  # 2 made, 1 left
    for event, attempts in ((spent, 3), (last_one, 2)):
        await pg.execute(
            "INSERT INTO deliveries (conversion_id, event_id, publisher_id, status, sequence,"
            " attempts, first_attempt_at, last_attempt_at)"
            " VALUES ($1, $2, $3, 'pending', 0, $4, now(), now())",
            event.conversion_id,
            event.event_id,
            publisher_id,
            attempts,
        )
        await dispatcher.publish(event, {HEADER_ATTEMPT: 0})

    spent_dead = await wait_for(lambda: dead_letter_row(pg, str(spent.event_id)))
    last_dead = await wait_for(lambda: dead_letter_row(pg, str(last_one.event_id)))
    assert spent_dead["reason"] == "exhausted" and last_dead["reason"] == "exhausted"
    assert len(receiver.matching("/crash")) == 1  # only the one attempt that was left
    assert (await delivery_row(pg, spent.conversion_id))["attempts"] == 3
    assert (await delivery_row(pg, last_one.conversion_id))["attempts"] == 3


async def test_replay_sends_again_and_stale_copies_are_dropped(
    dispatcher: DispatcherHandle, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    receiver.responder = lambda request: 410
    publisher_id = await create_publisher_with_settings(pg, receiver.base_url + "/rp")
    event = make_event(publisher_id)
    await dispatcher.publish(event)
    await wait_for(lambda: dead_letter_row(pg, str(event.event_id)))
    await pg.execute(
        "UPDATE dead_letters SET state = 'replayed', replayed_at = now() WHERE event_key = $1",
        str(event.event_id),
    )

    # Replay (sequence 1) against a receiver that is still broken: dies again, revived.
    replay = {HEADER_TRIGGER: "replay", HEADER_SEQUENCE: 1, HEADER_ATTEMPT: 0}
    await dispatcher.publish(event, replay)
    revived = await wait_for(
        lambda: _dead_with_sequence(pg, str(event.event_id), 1), message="revived dead letter"
    )
    assert revived["state"] == "dead" and revived["replayed_at"] is None

    # Fixed receiver, second replay: delivered; a stale sequence-0 copy is dropped.
    receiver.responder = None
    await dispatcher.publish(event, {**replay, HEADER_SEQUENCE: 2})
    row = await wait_for(lambda: _status(pg, event.conversion_id, "delivered"))
    assert row["sequence"] == 2 and row["attempts"] == 1
    await dispatcher.publish(event)
    marker = make_event(publisher_id)
    await dispatcher.publish(marker)
    await wait_for(lambda: _status(pg, marker.conversion_id, "delivered"))
    assert len(receiver.matching("/rp")) == 4  # first, replay 1, replay 2, marker
    attempts = await attempt_rows(pg, event.conversion_id)
    assert [a["trigger"] for a in attempts] == ["first", "replay", "replay"]


async def _dead_with_sequence(pg: asyncpg.Pool, key: str, sequence: int) -> Any:
    row = await dead_letter_row(pg, key)
    return row if row is not None and row["sequence"] == sequence else None


async def test_metrics_are_exposed(dispatcher: DispatcherHandle) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=dispatcher.base_url) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert "# TYPE postback_dispatcher_messages_total counter" in response.text
    assert "postback_breaker_opened_total" in response.text


async def test_concurrent_copies_of_one_event_send_once(
    dispatcher: DispatcherHandle, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    async def slow(request: Any) -> int:
        await asyncio.sleep(0.3)
        return 200

    receiver.responder = slow
    publisher_id = await create_publisher_with_settings(pg, receiver.base_url + "/dup")
    event = make_event(publisher_id)
    await dispatcher.publish(event)
    await dispatcher.publish(event)
    await wait_for(lambda: _status(pg, event.conversion_id, "delivered"))
    marker = make_event(publisher_id)
    await dispatcher.publish(marker)
    await wait_for(lambda: _status(pg, marker.conversion_id, "delivered"))
    assert len(receiver.matching("/dup")) == 2  # the event once, the marker once
