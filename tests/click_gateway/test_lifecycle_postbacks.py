"""Statuses end to end: v1 and v2 events in one queue, postbacks only for approved conversions.

A gateway and (later) a dispatcher of their own, on a database and vhost of
their own, with a loopback receiver as the publisher's tracker. The events
wait in the work queue until the dispatcher starts, so old (v1) and new (v2)
events are really side by side, as during a rolling upgrade.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

import aio_pika
import httpx
import pytest

from click_gateway.app import create_app as create_gateway
from click_gateway.settings import GatewaySettings
from postback_core.topology import WORK_QUEUE
from tests.factories import (
    ADMIN_HEADERS,
    create_advertiser,
    create_click,
    create_offer,
    create_publisher,
    create_smartlink,
)
from tests.postback_dispatcher.conftest import make_event, publish_event, running_dispatcher
from tests.support.infra import create_test_database, create_test_vhost, delete_vhost, drop_database
from tests.support.polling import wait_for
from tests.support.servers import Receiver, run_receiver, serve_asgi


@dataclass
class Stack:
    gateway: httpx.AsyncClient
    receiver: Receiver
    database_url: str
    amqp_url: str


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[Stack]:
    database_url = await create_test_database("postback_lifecycle")
    vhost, amqp_url = await create_test_vhost("lifecycle")
    settings = GatewaySettings(
        DATABASE_URL=database_url, AMQP_URL=amqp_url, CACHE_REFRESH_SECONDS=0.2
    )
    try:
        async with (
            run_receiver() as receiver,
            serve_asgi(create_gateway(settings)) as gateway_url,
            httpx.AsyncClient(base_url=gateway_url) as gateway,
        ):
            yield Stack(gateway, receiver, database_url, amqp_url)
    finally:
        await delete_vhost(vhost)
        await drop_database(database_url)


async def _queued(amqp_url: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(WORK_QUEUE, passive=True)
        return queue.declaration_result.message_count or 0
    finally:
        await connection.close()


async def test_v1_and_v2_side_by_side_and_only_approved_conversions_fire(stack: Stack) -> None:
    gateway, receiver = stack.gateway, stack.receiver
    publisher = await create_publisher(gateway)
    saved = await gateway.put(
        f"/api/v1/publishers/{publisher['id']}/postback",
        json={"url_template": f"{receiver.base_url}/pb?c={{click_id}}&p={{payout}}"},
        headers=ADMIN_HEADERS,
    )
    assert saved.status_code == 200, saved.text
    advertiser = await create_advertiser(gateway)
    offer = await create_offer(gateway, advertiser_id=advertiser["id"], payout="1.25")
    review = await gateway.post(
        f"/api/v1/offers/{offer['id']}/goals",
        json={"name": "review", "payout": "4", "hold_days": None},
        headers=ADMIN_HEADERS,
    )
    assert review.status_code == 201
    link = await create_smartlink(gateway, publisher_id=publisher["id"], offer_ids=[offer["id"]])
    headers = {"X-Api-Key": advertiser["api_key"]}

    async def convert(**body: object) -> dict[str, object]:
        click_id = await create_click(
            stack.database_url,
            publisher_id=publisher["id"],
            smartlink_id=link["id"],
            offer_id=offer["id"],
        )
        response = await gateway.post(
            "/api/v1/conversions", json={"click_id": click_id, **body}, headers=headers
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def patch(conversion: dict[str, object], status: str) -> None:
        response = await gateway.patch(
            f"/api/v1/conversions/{conversion['conversion_id']}",
            json={"status": status},
            headers=headers,
        )
        assert response.status_code == 200, response.text

    approved_at_once = await convert()  # v2 created, approved
    approved_later = await convert(goal="review")  # v2 created, pending ...
    await patch(approved_later, "approved")  # ... then v2 status_changed, approved
    rejected = await convert(goal="review")  # pending, then rejected: never fires
    await patch(rejected, "rejected")
    left_pending = await convert(goal="review")  # never fires
    old_event = make_event(publisher["id"], payout=Decimal("0.70"))
    await publish_event(stack.amqp_url, old_event)  # v1, as an old gateway sends it

    # 4 created + 2 status changes from the gateway's relay, and the v1 event.
    async def all_queued() -> bool:
        return await _queued(stack.amqp_url) == 7

    await wait_for(all_queued, timeout=20, message="seven events waiting in the work queue")

    async with running_dispatcher(stack.database_url, stack.amqp_url):

        async def settled() -> bool:
            return len(receiver.matching("/pb")) >= 3 and await _queued(stack.amqp_url) == 0

        await wait_for(settled, timeout=30, message="the three postbacks and an empty queue")
    fired = sorted((r.query["c"], r.query["p"]) for r in receiver.matching("/pb"))
    assert fired == sorted(
        [
            (str(approved_at_once["click_id"]), "1.25"),
            (str(approved_later["click_id"]), "4.00"),
            (str(old_event.click_id), "0.70"),
        ]
    )
    never = {str(rejected["click_id"]), str(left_pending["click_id"])}
    assert never.isdisjoint(r.query["c"] for r in receiver.matching("/pb"))
