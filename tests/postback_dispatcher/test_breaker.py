"""The circuit breaker: per endpoint for HTTP-level failures, per host for unreachable hosts.

Many publishers share one hosted tracker: one publisher's broken path must not
pause (let alone dead-letter) the postbacks of the others on the same host, and
an open breaker never uses up an attempt.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from postback_dispatcher.breaker import CircuitBreakers, Failure, endpoint_key
from postback_dispatcher.consumer import breaker_failure
from postback_dispatcher.sender import SendResult
from tests.postback_dispatcher.conftest import (
    create_publisher_with_settings,
    fresh_vhost,
    make_event,
    publish_many,
    running_dispatcher,
)
from tests.support.polling import wait_for
from tests.support.servers import ReceivedRequest, Receiver, free_port

# -- the state machine (a fake clock; no infrastructure) ----------------------------------

A_OK = "https://tracker.example/a/ok"
B_FAIL = "https://tracker.example/b/fail"
HOST = "tracker.example"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def breakers(clock: Clock, threshold: int = 3, cooldown: float = 30.0) -> CircuitBreakers:
    return CircuitBreakers(threshold, cooldown, clock=clock)


def test_http_failures_pause_only_their_endpoint(clock: Clock) -> None:
    b = breakers(clock)
    for _ in range(3):
        assert b.allow(B_FAIL, HOST)
        b.record(B_FAIL, HOST, Failure.ENDPOINT)
    assert not b.allow(B_FAIL, HOST)
    assert b.paused_for(B_FAIL, HOST) == pytest.approx(30.0)
    # The other publisher's path on the same host is untouched.
    assert b.paused_for(A_OK, HOST) == 0 and not b.is_paused(A_OK, HOST)
    assert b.is_paused(B_FAIL, HOST)
    assert b.allow(A_OK, HOST)
    assert b.open_hosts() == [B_FAIL]


def test_connection_failures_pause_the_whole_host(clock: Clock) -> None:
    b = breakers(clock)
    for _ in range(3):
        b.record(B_FAIL, HOST, Failure.HOST)
    assert not b.allow(A_OK, HOST) and not b.allow(B_FAIL, HOST)
    assert b.allow("https://other.example/x", "other.example")
    assert b.open_hosts() == [HOST]


def test_threshold_counts_consecutive_failures_only(clock: Clock) -> None:
    b = breakers(clock)
    b.record(B_FAIL, HOST, Failure.ENDPOINT)
    b.record(B_FAIL, HOST, Failure.ENDPOINT)
    b.record(B_FAIL, HOST, None)  # a success in between starts the count again
    b.record(B_FAIL, HOST, Failure.ENDPOINT)
    b.record(B_FAIL, HOST, Failure.ENDPOINT)
    assert b.allow(B_FAIL, HOST)
    assert b.opened_total == 0


def test_an_answering_host_is_reachable_even_if_a_path_fails(clock: Clock) -> None:
    b = breakers(clock)
    b.record(A_OK, HOST, Failure.HOST)
    b.record(A_OK, HOST, Failure.HOST)
    b.record(B_FAIL, HOST, Failure.ENDPOINT)  # the host took a request: not unreachable
    b.record(A_OK, HOST, Failure.HOST)
    assert b.allow(A_OK, HOST)


def test_half_open_lets_one_probe_through_then_closes_or_reopens(clock: Clock) -> None:
    b = breakers(clock)
    for _ in range(3):
        b.record(B_FAIL, HOST, Failure.ENDPOINT)
    clock.now += 30.5
    assert b.paused_for(B_FAIL, HOST) == 0
    assert b.allow(B_FAIL, HOST)  # the probe
    assert not b.allow(B_FAIL, HOST)  # only one at a time
    b.record(B_FAIL, HOST, Failure.ENDPOINT)  # the probe failed: paused again
    assert b.opened_total == 2 and not b.allow(B_FAIL, HOST)
    clock.now += 31
    assert b.allow(B_FAIL, HOST)
    b.record(B_FAIL, HOST, None)  # the probe succeeded: closed
    assert b.allow(B_FAIL, HOST) and b.allow(B_FAIL, HOST)
    assert b.open_hosts() == []
    assert b.short_circuited_total == 2


def test_a_probe_that_never_reports_back_is_replaced_after_a_cooldown(clock: Clock) -> None:
    b = breakers(clock)
    for _ in range(3):
        b.record(B_FAIL, HOST, Failure.ENDPOINT)
    clock.now += 31
    assert b.allow(B_FAIL, HOST)
    clock.now += 31  # no record() for the probe (e.g. the process lost it)
    assert b.allow(B_FAIL, HOST)


def test_endpoint_is_scheme_host_port_and_path() -> None:
    assert endpoint_key("https://t.example:8443/pb/x?cid=1&t=***#frag") == (
        "https://t.example:8443/pb/x"
    )
    assert endpoint_key("http://t.example/pb#a?b") == "http://t.example/pb"
    assert endpoint_key("http://t.example") == "http://t.example"


@pytest.mark.parametrize(
    ("status", "error_class", "verdict", "expected"),
    [
        (200, None, "delivered", None),
        (404, "HTTP404", "dead", None),
        (500, "HTTP500", "retry", Failure.ENDPOINT),
        (429, "HTTP429", "retry", Failure.ENDPOINT),
        (None, "Timeout", "retry", Failure.ENDPOINT),
        (None, "ServerDisconnectedError", "retry", Failure.ENDPOINT),
        (None, "ConnectionError", "retry", Failure.HOST),
        (None, "DNSError", "retry", Failure.HOST),
    ],
)
def test_failures_are_classified_by_level(
    status: int | None, error_class: str | None, verdict: str, expected: Failure | None
) -> None:
    result = SendResult(status, 1.0, None, error_class, None, None, "http://h/p")
    assert breaker_failure(result, verdict) == expected


# -- through the dispatcher ---------------------------------------------------------------


async def _statuses(pg: asyncpg.Pool, conversion_ids: list[int]) -> dict[int, str]:
    rows = await pg.fetch(
        "SELECT conversion_id, status FROM deliveries WHERE conversion_id = ANY($1::bigint[])",
        conversion_ids,
    )
    return {r["conversion_id"]: r["status"] for r in rows}


async def test_one_publishers_broken_path_does_not_touch_anothers_on_the_same_host(
    database_url: str, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    def answer(request: ReceivedRequest) -> int:
        return 500 if request.path == "/fail" else 200

    receiver.responder = answer
    failing_pub = await create_publisher_with_settings(pg, receiver.base_url + "/fail?c={click_id}")
    healthy_pub = await create_publisher_with_settings(pg, receiver.base_url + "/ok?c={click_id}")
    failing = [make_event(failing_pub) for _ in range(30)]
    healthy = [make_event(healthy_pub) for _ in range(30)]
    # After the first ten failing ones: the rest of both, interleaved.
    interleaved = [e for pair in zip(failing[10:], healthy[:20], strict=True) for e in pair]
    interleaved += healthy[20:]
    async with (
        fresh_vhost() as amqp_url,
        running_dispatcher(
            database_url,
            amqp_url,
            POSTBACK_BREAKER_THRESHOLD=3,
            POSTBACK_BREAKER_COOLDOWN_SECONDS=30,
            POSTBACK_PER_HOST_CONCURRENCY=4,
        ) as dispatcher,
    ):
        await publish_many(amqp_url, failing[:10])  # the breaker learns about /fail first
        await wait_for(
            lambda: asyncio.sleep(0, bool(dispatcher.runtime.consumer.breakers.open_hosts())),
            timeout=20,
            message="/fail paused",
        )
        await publish_many(amqp_url, interleaved)

        healthy_ids = [e.conversion_id for e in healthy]

        async def all_healthy_delivered() -> bool:
            statuses = await _statuses(pg, healthy_ids)
            return list(statuses.values()).count("delivered") == len(healthy)

        await wait_for(all_healthy_delivered, timeout=30, message="every /ok postback")
        paused = dispatcher.runtime.consumer.breakers.open_hosts()
        assert paused == [receiver.base_url + "/fail"], paused
        assert dispatcher.runtime.consumer.metrics.breaker_open > 0  # /fail ones deferred

    assert len(receiver.matching("/ok")) == len(healthy)  # each exactly once
    outcomes = await pg.fetch(
        "SELECT outcome, count(*) AS n FROM delivery_attempts"
        " WHERE conversion_id = ANY($1::bigint[]) GROUP BY outcome",
        healthy_ids,
    )
    assert {r["outcome"]: r["n"] for r in outcomes} == {"delivered": len(healthy)}
    dead = await pg.fetchval(
        "SELECT count(*) FROM dead_letters WHERE conversion_id = ANY($1::bigint[])", healthy_ids
    )
    assert dead == 0
    # The paused /fail postbacks were deferred, never charged an attempt for it.
    failing_ids = [e.conversion_id for e in failing]
    breaker_rows = await pg.fetchval(
        "SELECT count(*) FROM delivery_attempts WHERE conversion_id = ANY($1::bigint[])"
        " AND outcome = 'breaker_open'",
        failing_ids + healthy_ids,
    )
    assert breaker_rows == 0


async def test_an_unreachable_host_defers_without_using_attempts(
    database_url: str, pg: asyncpg.Pool
) -> None:
    """Connection refused pauses the host; its messages wait in retry tiers, uncharged."""
    closed_port = free_port()  # nothing listens there
    publisher_id = await create_publisher_with_settings(
        pg, f"http://127.0.0.1:{closed_port}/a?c={{click_id}}"
    )
    other_path_pub = await create_publisher_with_settings(
        pg, f"http://127.0.0.1:{closed_port}/b?c={{click_id}}"
    )
    first = [make_event(publisher_id) for _ in range(3)]
    later = [make_event(other_path_pub) for _ in range(5)]
    async with (
        fresh_vhost() as amqp_url,
        running_dispatcher(
            database_url,
            amqp_url,
            POSTBACK_BREAKER_THRESHOLD=3,
            POSTBACK_BREAKER_COOLDOWN_SECONDS=30,
            POSTBACK_PER_HOST_CONCURRENCY=1,
        ) as dispatcher,
    ):
        consumer = dispatcher.runtime.consumer
        await publish_many(amqp_url, first)
        await wait_for(
            lambda: asyncio.sleep(
                0, consumer.breakers.open_hosts() == [f"127.0.0.1:{closed_port}"]
            ),
            timeout=20,
            message="host paused",
        )
        deferred_before = consumer.metrics.breaker_open
        await publish_many(amqp_url, later)

        async def later_deferred() -> Any:
            return consumer.metrics.breaker_open >= deferred_before + len(later)

        await wait_for(later_deferred, timeout=20, message="deferrals")
        charged = await pg.fetchval(
            "SELECT coalesce(sum(attempts), 0) FROM deliveries"
            " WHERE conversion_id = ANY($1::bigint[])",
            [e.conversion_id for e in later],
        )
        assert charged == 0  # never claimed, or given back
        dead = await pg.fetchval(
            "SELECT count(*) FROM dead_letters WHERE conversion_id = ANY($1::bigint[])",
            [e.conversion_id for e in later],
        )
        assert dead == 0
