"""Consumers come back after the broker drops the dispatcher's connections.

The broker closes connections for its own reasons (a frame over its limit, a
restart, an operator): after the automatic reconnect every queue the
dispatcher consumes (work queue, dead-letter queue) must have its consumer back,
and messages must flow again.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import shutil
import subprocess
from typing import Any
from urllib.parse import unquote

import asyncpg

from postback_core.contracts import MAX_EVENT_BYTES
from postback_core.topology import DEAD_LETTER_QUEUE, WORK_QUEUE
from tests.postback_dispatcher.conftest import (
    create_publisher_with_settings,
    dead_letter_row,
    delivery_row,
    fresh_vhost,
    make_event,
    publish_event,
    running_dispatcher,
)
from tests.support.polling import wait_for
from tests.support.servers import Receiver


def _rabbitmqctl(*args: str) -> str:
    exe = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    done = subprocess.run(
        [exe, "-q", *args], check=True, capture_output=True, text=True, timeout=60
    )
    return done.stdout


async def connections_of(vhost: str) -> set[str]:
    """Pids of the dispatcher's connections to ``vhost`` (named in its client properties)."""
    out = await asyncio.to_thread(
        _rabbitmqctl, "list_connections", "pid", "vhost", "client_properties"
    )
    pids = set()
    for line in out.splitlines():
        pid, where, properties = [*line.split("\t"), "", ""][:3]
        if where == vhost and "postback-dispatcher" in properties:
            pids.add(pid)
    return pids


async def consumers_of(vhost: str) -> dict[str, int]:
    """Consumers per queue, asked of the queues themselves (``list_queues`` counts lag)."""
    out = await asyncio.to_thread(
        _rabbitmqctl, "list_consumers", "-p", vhost, "queue_name", "consumer_tag"
    )
    counts: dict[str, int] = {}
    for line in out.splitlines():
        name, _, tag = line.partition("\t")
        if tag and name != "queue_name":
            counts[name] = counts.get(name, 0) + 1
    return counts


async def close_connections(pids: set[str]) -> None:
    # rabbitmqctl (3.x) names a connection by its Erlang pid.
    for pid in pids:
        await asyncio.to_thread(_rabbitmqctl, "close_connection", pid, "test: broker closed it")


def _vhost(amqp_url: str) -> str:
    return unquote(amqp_url.rsplit("/", 1)[1])


async def _delivered(pg: asyncpg.Pool, conversion_id: int) -> Any:
    row = await delivery_row(pg, conversion_id)
    return row if row is not None and row["status"] == "delivered" else None


async def test_every_consumer_is_back_after_the_broker_closes_the_connections(
    database_url: str, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    publisher_id = await create_publisher_with_settings(pg, receiver.base_url + "/back")
    async with fresh_vhost() as amqp_url, running_dispatcher(database_url, amqp_url) as dispatcher:
        vhost = _vhost(amqp_url)
        before = await consumers_of(vhost)
        assert before.get(WORK_QUEUE, 0) >= 1 and before.get(DEAD_LETTER_QUEUE, 0) >= 1

        for round_no in range(2):  # a second drop right after the first recovery, too
            dropped = await wait_for(lambda: connections_of(vhost), message="connections")
            await close_connections(dropped)

            async def reconnected(dropped: set[str] = dropped) -> bool:
                now = await connections_of(vhost)
                return bool(now) and not (now & dropped)

            await wait_for(reconnected, timeout=30, message=f"reconnect {round_no}")

            async def consumers_back() -> dict[str, int] | None:
                counts = await consumers_of(vhost)
                ok = counts.get(WORK_QUEUE, 0) >= 1 and counts.get(DEAD_LETTER_QUEUE, 0) >= 1
                return counts if ok else None

            await wait_for(consumers_back, timeout=30, message=f"consumers back {round_no}")

            # Messages flow: a postback is delivered, a poison message is archived.
            event = make_event(publisher_id)
            await dispatcher.publish(event)
            await wait_for(functools.partial(_delivered, pg, event.conversion_id), timeout=30)
            poison = b"{not json, round %d %s" % (round_no, event.event_id.bytes.hex().encode())
            await dispatcher.publish(poison)
            key = "sha256:" + hashlib.sha256(poison).hexdigest()
            dead = await wait_for(functools.partial(dead_letter_row, pg, key), timeout=30)
            assert dead["reason"] == "poison"


async def test_an_oversized_message_does_not_cost_the_dead_letter_consumer(
    database_url: str, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    """The 10 MB event: dead-lettered as ``oversized`` (an excerpt), consumers stay."""
    publisher_id = await create_publisher_with_settings(pg, receiver.base_url + "/big")
    async with fresh_vhost() as amqp_url, running_dispatcher(database_url, amqp_url):
        vhost = _vhost(amqp_url)
        big = make_event(publisher_id, external_id="e").to_json()[:-1] + (
            b',"padding":"' + b"x" * (10 * 1024 * 1024) + b'"}'
        )
        big_headers = {"x-postback-last-error": "y" * 100_000}  # most of a frame
        await publish_event(amqp_url, big, big_headers)
        key = "sha256:" + hashlib.sha256(big).hexdigest()
        dead = await wait_for(lambda: dead_letter_row(pg, key), timeout=60, message="oversized")
        assert dead["reason"] == "oversized" and str(MAX_EVENT_BYTES) in dead["last_error"]
        assert len(dead["payload"]) <= 1024

        counts = await consumers_of(vhost)
        assert counts.get(WORK_QUEUE, 0) >= 1 and counts.get(DEAD_LETTER_QUEUE, 0) >= 1
        event = make_event(publisher_id)
        await publish_event(amqp_url, event)
        await wait_for(lambda: _delivered(pg, event.conversion_id), timeout=30)
