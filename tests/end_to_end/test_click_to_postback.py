"""The whole product on one machine: SmartLink click → conversion → signed postback.

A gateway and a dispatcher of their own, on a database and vhost of their own
(so no other test's outbox relay or dispatcher takes the events), with a
loopback receiver standing in for the publisher's tracker.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from click_gateway.app import create_app as create_gateway
from click_gateway.settings import GatewaySettings
from postback_dispatcher.signing import verify_signature
from tests.factories import (
    ADMIN_HEADERS,
    create_advertiser,
    create_offer,
    create_publisher,
    create_smartlink,
)
from tests.postback_dispatcher.conftest import running_dispatcher
from tests.support.infra import (
    create_test_database,
    create_test_vhost,
    delete_vhost,
    drop_database,
)
from tests.support.polling import wait_for
from tests.support.servers import Receiver, run_receiver, serve_asgi

ALL_MACROS = (
    "click_id", "external_id", "publisher_id", "payout", "country", "ip",
    "os", "device", "offer_id", "smartlink_id", "security_token",
)  # fmt: skip
ANDROID_PHONE = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36"
)


@dataclass
class Stack:
    gateway: httpx.AsyncClient
    receiver: Receiver


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[Stack]:
    database_url = await create_test_database("postback_e2e")
    vhost, amqp_url = await create_test_vhost("e2e")
    gateway_settings = GatewaySettings(
        DATABASE_URL=database_url,
        AMQP_URL=amqp_url,
        TRUSTED_PROXIES="127.0.0.1/32",
        CLICK_FLUSH_INTERVAL_MS=50,
        CACHE_REFRESH_SECONDS=0.2,
    )
    try:
        async with (
            run_receiver() as receiver,
            running_dispatcher(database_url, amqp_url),
            serve_asgi(create_gateway(gateway_settings)) as gateway_url,
            httpx.AsyncClient(base_url=gateway_url) as gateway,
        ):
            yield Stack(gateway, receiver)
    finally:
        await delete_vhost(vhost)
        await drop_database(database_url)


async def test_click_then_conversion_fires_the_publishers_signed_postback(stack: Stack) -> None:
    gateway, receiver = stack.gateway, stack.receiver
    publisher = await create_publisher(gateway)
    query = "&".join(f"{name}={{{name}}}" for name in ALL_MACROS)
    saved = await gateway.put(
        f"/api/v1/publishers/{publisher['id']}/postback",
        json={"url_template": f"{receiver.base_url}/pb?{query}", "security_token": "tok/e2e+1"},
        headers=ADMIN_HEADERS,
    )
    assert saved.status_code == 200, saved.text
    advertiser = await create_advertiser(gateway)
    offer = await create_offer(
        gateway,
        advertiser_id=advertiser["id"],
        payout="1.2500",
        countries=["GB"],
        os=["Android"],
        devices=["mobile"],
    )
    smartlink = await create_smartlink(
        gateway, publisher_id=publisher["id"], offer_ids=[offer["id"]]
    )

    async def redirected() -> httpx.Response | None:
        response = await gateway.get(
            f"/get/{smartlink['code']}",
            params={"cid": "a b&c=d", "sub1": "campaign-9"},
            headers={"X-Forwarded-For": "81.2.69.160", "User-Agent": ANDROID_PHONE},
        )
        return response if response.status_code == 302 else None

    click = await wait_for(redirected, timeout=5, message="the new SmartLink to redirect")
    click_id = parse_qs(urlsplit(click.headers["location"]).query)["clickid"][0]

    converted_at = time.time()
    conversion = await gateway.post(
        "/api/v1/conversions",
        json={"click_id": click_id},
        headers={"X-Api-Key": advertiser["api_key"]},
    )
    assert conversion.status_code == 201, conversion.text

    async def postback() -> list[object]:
        return list(receiver.matching("/pb"))

    [request] = await wait_for(postback, timeout=10, message="the publisher's postback")
    assert request.received_at - converted_at < 5
    assert request.query == {
        "click_id": click_id,
        "external_id": "a b&c=d",  # arrived intact as one value
        "publisher_id": str(publisher["id"]),
        "payout": "1.25",
        "country": "GB",
        "ip": "81.2.69.160",
        "os": "Android",
        "device": "mobile",
        "offer_id": str(offer["id"]),
        "smartlink_id": str(smartlink["id"]),
        "security_token": "tok/e2e+1",
    }
    assert Decimal(request.query["payout"]) == Decimal("1.2500")
    headers = {k.lower(): v for k, v in request.headers.items()}
    full_url = f"{receiver.base_url}{request.raw_url}"
    assert verify_signature(
        "tok/e2e+1", full_url, headers["x-postback-timestamp"], headers["x-postback-signature"]
    )

    # The advertiser's tracker retries: same answer, and no second postback.
    repeat = await gateway.post(
        "/api/v1/conversions",
        json={"click_id": click_id},
        headers={"X-Api-Key": advertiser["api_key"]},
    )
    assert repeat.status_code == 200
    assert repeat.json()["conversion_id"] == conversion.json()["conversion_id"]
    # A second sale on the same click (its own txid) is published after any duplicate
    # would have been, so once its postback is in, a duplicate would be too.
    marker = await gateway.post(
        "/api/v1/conversions",
        json={"click_id": click_id, "txid": "second-sale"},
        headers={"X-Api-Key": advertiser["api_key"]},
    )
    assert marker.status_code == 201

    async def two_postbacks() -> bool:
        return len(receiver.matching("/pb")) >= 2

    await wait_for(two_postbacks, timeout=10, message="the second sale's postback")
    assert len(receiver.matching("/pb")) == 2
