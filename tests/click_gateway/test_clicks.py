"""The SmartLink click: GET/HEAD /get/{code} → recorded click → 302 to the chosen offer."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest

from click_gateway.app import create_app
from click_gateway.clicks.ids import MAX_NODE, ClickIdGenerator, click_created_at
from click_gateway.settings import GatewaySettings
from postback_core.db.base import asyncpg_dsn
from tests.click_gateway.clicks_support import (
    ANDROID_PHONE_UA,
    BOT_UA,
    BROWSER,
    DESKTOP_UA,
    IPAD_UA,
    IPHONE_UA,
    click_id_of,
    create_advertiser,
    create_offer,
    create_publisher,
    create_smartlink,
    offer_of,
    stored_click,
)
from tests.support.polling import wait_for
from tests.support.servers import serve_asgi


@pytest.fixture(scope="module")
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(asyncpg_dsn(database_url), min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def advertiser_id(db: asyncpg.Pool) -> int:
    return await create_advertiser(db)


@pytest.fixture(scope="module")
async def publisher_id(db: asyncpg.Pool) -> int:
    return await create_publisher(db)


async def first_click(
    client: httpx.AsyncClient, code: str, timeout: float = 5.0, **kwargs: object
) -> httpx.Response:
    """Click until the gateway's cache knows the new SmartLink; return the first redirect."""

    async def probe() -> httpx.Response | None:
        response = await client.get(f"/get/{code}", **kwargs)  # type: ignore[arg-type]
        return response if response.status_code != 404 else None

    response = await wait_for(probe, timeout=timeout, message=f"smartlink {code} served")
    assert response is not None
    return response


async def wait_stored(db: asyncpg.Pool, click_id: int, timeout: float = 3.0) -> asyncpg.Record:
    async def probe() -> asyncpg.Record | None:
        return await stored_click(db, click_id)

    return await wait_for(probe, timeout=timeout, message=f"click {click_id} stored")


# --- redirect basics -----------------------------------------------------------------


async def test_redirect_carries_the_click_id_and_is_not_cacheable(
    gateway: httpx.AsyncClient, db: asyncpg.Pool, publisher_id: int, advertiser_id: int
) -> None:
    offer_id = await create_offer(
        db,
        advertiser_id,
        "https://adv.example/o{offer}?click={click_id}&ext={external_id}&pub={publisher_id}"
        "&sl={smartlink_id}&oid={offer_id}&c={country}&os={os}&d={device}&s1={sub1}",
    )
    smartlink_id, code = await create_smartlink(db, publisher_id, [offer_id])
    response = await first_click(
        gateway,
        code,
        params={"cid": "a b&c=d/é", "sub1": "x y"},
        headers={"User-Agent": DESKTOP_UA, "X-Forwarded-For": "81.2.69.160"},
    )

    assert response.status_code == 302
    assert response.headers["cache-control"] == "no-store"
    location = response.headers["location"]
    raw_query = urlsplit(location).query
    # Values are URL-encoded: the external id can't break out of its parameter.
    assert "ext=a%20b%26c%3Dd%2F%C3%A9" in raw_query
    query = parse_qs(raw_query)
    click_id = int(query["click"][0])
    assert query["ext"] == ["a b&c=d/é"]
    assert query["pub"] == [str(publisher_id)]
    assert query["sl"] == [str(smartlink_id)]
    assert query["oid"] == [str(offer_id)]
    assert query["c"] == ["GB"]
    assert query["os"] == ["Windows"]
    assert query["d"] == ["desktop"]
    assert query["s1"] == ["x y"]

    row = await wait_stored(db, click_id)
    assert row["external_id"] == "a b&c=d/é"
    assert row["publisher_id"] == publisher_id
    assert row["smartlink_id"] == smartlink_id
    assert row["offer_id"] == offer_id
    assert row["ip_text"] == "81.2.69.160"
    assert row["country"] == "GB"
    assert row["os"] == "Windows"
    assert row["device"] == "desktop"
    assert row["user_agent"] == DESKTOP_UA
    assert row["is_bot"] is False
    assert row["method"] == "GET"
    assert row["created_at"] == click_created_at(click_id)
    assert abs(row["created_at"].timestamp() - time.time()) < 60


@pytest.mark.parametrize("alias", ["cid", "clickid", "click_id", "external_id"])
async def test_every_external_id_alias_is_recorded(
    alias: str,
    gateway: httpx.AsyncClient,
    db: asyncpg.Pool,
    publisher_id: int,
    advertiser_id: int,
) -> None:
    offer_id = await create_offer(db, advertiser_id)
    _, code = await create_smartlink(db, publisher_id, [offer_id])
    await first_click(gateway, code, headers=BROWSER)

    response = await gateway.get(f"/get/{code}", params={alias: f"ext-{alias}"}, headers=BROWSER)

    assert response.status_code == 302
    row = await wait_stored(db, click_id_of(response))
    assert row["external_id"] == f"ext-{alias}"


async def test_external_id_precedence_skips_empty_values_and_caps_length(
    gateway: httpx.AsyncClient, db: asyncpg.Pool, publisher_id: int, advertiser_id: int
) -> None:
    offer_id = await create_offer(db, advertiser_id)
    _, code = await create_smartlink(db, publisher_id, [offer_id])
    await first_click(gateway, code, headers=BROWSER)

    # Query order doesn't matter; alias order does: cid, clickid, click_id, external_id.
    mixed = await gateway.get(
        f"/get/{code}?external_id=d&click_id=c&clickid=b&cid=", headers=BROWSER
    )
    only_last = await gateway.get(f"/get/{code}?external_id=only", headers=BROWSER)
    too_long = await gateway.get(f"/get/{code}", params={"clickid": "x" * 1000}, headers=BROWSER)
    none_given = await gateway.get(f"/get/{code}?cid=&sub1=", headers=BROWSER)

    assert (await wait_stored(db, click_id_of(mixed)))["external_id"] == "b"
    assert (await wait_stored(db, click_id_of(only_last)))["external_id"] == "only"
    assert (await wait_stored(db, click_id_of(too_long)))["external_id"] == "x" * 256
    row = await wait_stored(db, click_id_of(none_given))
    assert row["external_id"] is None
    assert row["sub1"] is None


async def test_sub_ids_are_stored(
    gateway: httpx.AsyncClient, db: asyncpg.Pool, publisher_id: int, advertiser_id: int
) -> None:
    offer_id = await create_offer(db, advertiser_id)
    _, code = await create_smartlink(db, publisher_id, [offer_id])
    await first_click(gateway, code, headers=BROWSER)

    response = await gateway.get(
        f"/get/{code}",
        params={"sub1": "s1", "sub2": "two words", "sub3": "", "sub5": "y" * 300, "sub6": "no"},
        headers=BROWSER,
    )

    row = await wait_stored(db, click_id_of(response))
    assert (row["sub1"], row["sub2"], row["sub3"], row["sub4"]) == ("s1", "two words", None, None)
    assert row["sub5"] == "y" * 256


# --- targeting, weights, fallback ----------------------------------------------------


async def test_offers_are_targeted_by_country(
    gateway: httpx.AsyncClient, db: asyncpg.Pool, publisher_id: int, advertiser_id: int
) -> None:
    gb_offer = await create_offer(db, advertiser_id, countries=["GB"])
    us_offer = await create_offer(db, advertiser_id, countries=["US", "CA"])
    _, code = await create_smartlink(
        db,
        publisher_id,
        [gb_offer, us_offer],
        fallback_url="https://fallback.example/?c={click_id}",
    )
    await first_click(gateway, code, headers=BROWSER)

    for _ in range(5):
        from_gb = await gateway.get(
            f"/get/{code}", headers={**BROWSER, "X-Forwarded-For": "81.2.69.160"}
        )
        from_us = await gateway.get(
            f"/get/{code}", headers={**BROWSER, "X-Forwarded-For": "8.8.8.8"}
        )
        assert offer_of(from_gb) == gb_offer
        assert offer_of(from_us) == us_offer
    row = await wait_stored(db, click_id_of(from_us))
    assert (row["country"], row["offer_id"]) == ("US", us_offer)


async def test_offers_are_targeted_by_os_and_device(
    gateway: httpx.AsyncClient, db: asyncpg.Pool, publisher_id: int, advertiser_id: int
) -> None:
    mobile_offer = await create_offer(db, advertiser_id, os=["Android", "iOS"], devices=["mobile"])
    tablet_offer = await create_offer(db, advertiser_id, os=["ios"], devices=["tablet"])
    desktop_offer = await create_offer(db, advertiser_id, os=["Windows", "Mac OS X"])
    _, code = await create_smartlink(db, publisher_id, [mobile_offer, tablet_offer, desktop_offer])
    await first_click(gateway, code, headers=BROWSER)

    expected = {
        ANDROID_PHONE_UA: (mobile_offer, "Android", "mobile"),
        IPHONE_UA: (mobile_offer, "iOS", "mobile"),
        IPAD_UA: (tablet_offer, "iOS", "tablet"),
        DESKTOP_UA: (desktop_offer, "Windows", "desktop"),
    }
    for user_agent, (offer_id, os_family, device) in expected.items():
        response = await gateway.get(f"/get/{code}", headers={"User-Agent": user_agent})
        assert offer_of(response) == offer_id, user_agent
        row = await wait_stored(db, click_id_of(response))
        assert (row["os"], row["device"], row["offer_id"]) == (os_family, device, offer_id)


async def test_offers_are_chosen_by_weight_and_weight_zero_never(
    gateway: httpx.AsyncClient, db: asyncpg.Pool, publisher_id: int, advertiser_id: int
) -> None:
    heavy = await create_offer(db, advertiser_id, weight=1)
    light = await create_offer(db, advertiser_id, weight=1)
    paused = await create_offer(db, advertiser_id, weight=0)
    _, code = await create_smartlink(db, publisher_id, [heavy, light, paused])
    await first_click(gateway, code, headers=BROWSER)

    responses = await asyncio.gather(
        *(gateway.get(f"/get/{code}", headers=BROWSER) for _ in range(80))
    )

    seen = Counter(offer_of(r) for r in responses)
    # 1:1 over 80 clicks: P(one offer never chosen) = 2 * 2^-80.
    assert seen[heavy] > 0
    assert seen[light] > 0
    assert seen[paused] == 0
    assert seen[heavy] + seen[light] == 80


async def test_no_matching_offer_goes_to_the_fallback_url(
    gateway: httpx.AsyncClient, db: asyncpg.Pool, publisher_id: int, advertiser_id: int
) -> None:
    de_only = await create_offer(db, advertiser_id, countries=["DE"])
    _, code = await create_smartlink(
        db, publisher_id, [de_only], fallback_url="https://fallback.example/land?click={click_id}"
    )

    response = await first_click(gateway, code, headers={**BROWSER, "X-Forwarded-For": "8.8.8.8"})

    assert response.status_code == 302
    assert response.headers["location"].startswith("https://fallback.example/land?click=")
    row = await wait_stored(db, click_id_of(response))
    assert row["offer_id"] is None
    assert row["country"] == "US"


async def test_no_matching_offer_and_no_fallback_is_a_404_page(
    gateway: httpx.AsyncClient, db: asyncpg.Pool, publisher_id: int, advertiser_id: int
) -> None:
    de_only = await create_offer(db, advertiser_id, countries=["DE"])
    _, code = await create_smartlink(db, publisher_id, [de_only])
    # A German visitor is served (the cache knows the link) ...
    await first_click(gateway, code, headers={**BROWSER, "X-Forwarded-For": "85.214.132.117"})

    response = await gateway.get(f"/get/{code}", headers={**BROWSER, "X-Forwarded-For": "8.8.8.8"})

    assert response.status_code == 404
    assert "text/html" in response.headers["content-type"]
    assert "No offer available" in response.text


async def test_inactive_offers_are_never_chosen(
    gateway: httpx.AsyncClient, db: asyncpg.Pool, publisher_id: int, advertiser_id: int
) -> None:
    live = await create_offer(db, advertiser_id)
    off = await create_offer(db, advertiser_id, is_active=False)
    _, code = await create_smartlink(db, publisher_id, [live, off])
    await first_click(gateway, code, headers=BROWSER)

    responses = await asyncio.gather(
        *(gateway.get(f"/get/{code}", headers=BROWSER) for _ in range(20))
    )

    assert {offer_of(r) for r in responses} == {live}


# --- unknown / disabled links and cache freshness --------------------------------------


async def test_unknown_code_is_a_404_page(gateway: httpx.AsyncClient) -> None:
    response = await gateway.get("/get/no-such-code?cid=1", headers=BROWSER)
    head = await gateway.head("/get/no-such-code")

    assert response.status_code == 404
    assert "text/html" in response.headers["content-type"]
    assert "Link not found" in response.text
    assert "Traceback" not in response.text
    assert head.status_code == 404


async def test_other_methods_are_refused(gateway: httpx.AsyncClient) -> None:
    response = await gateway.post("/get/anything")

    assert response.status_code == 405
    assert "GET" in response.headers["allow"]


async def test_cache_sees_new_disabled_and_reenabled_smartlinks_within_seconds(
    gateway: httpx.AsyncClient, db: asyncpg.Pool, publisher_id: int, advertiser_id: int
) -> None:
    offer_id = await create_offer(db, advertiser_id)
    smartlink_id, code = await create_smartlink(db, publisher_id, [offer_id])

    await first_click(gateway, code, timeout=3, headers=BROWSER)

    await db.execute("UPDATE smartlinks SET is_active = false WHERE id = $1", smartlink_id)

    async def refused() -> bool:
        response = await gateway.get(f"/get/{code}", headers=BROWSER)
        return response.status_code == 404

    await wait_for(refused, timeout=3, message="disabled smartlink refused")

    await db.execute("UPDATE smartlinks SET is_active = true WHERE id = $1", smartlink_id)
    await first_click(gateway, code, timeout=3, headers=BROWSER)


async def test_inactive_publisher_links_are_404(
    gateway: httpx.AsyncClient, db: asyncpg.Pool, advertiser_id: int
) -> None:
    publisher = await create_publisher(db, is_active=False)
    active_publisher = await create_publisher(db)
    offer_id = await create_offer(db, advertiser_id)
    _, code = await create_smartlink(db, publisher, [offer_id])
    _, marker = await create_smartlink(db, active_publisher, [offer_id])
    # Once a link created after ours is served, the cache has loaded ours too.
    await first_click(gateway, marker, headers=BROWSER)

    response = await gateway.get(f"/get/{code}", headers=BROWSER)

    assert response.status_code == 404


async def test_offer_changes_are_picked_up(
    gateway: httpx.AsyncClient, db: asyncpg.Pool, publisher_id: int, advertiser_id: int
) -> None:
    first = await create_offer(db, advertiser_id)
    second = await create_offer(db, advertiser_id, is_active=False)
    _, code = await create_smartlink(db, publisher_id, [first, second])
    assert offer_of(await first_click(gateway, code, headers=BROWSER)) == first

    await db.execute("UPDATE offers SET is_active = (id = $2) WHERE id IN ($1, $2)", first, second)

    async def switched() -> bool:
        return offer_of(await gateway.get(f"/get/{code}", headers=BROWSER)) == second

    await wait_for(switched, timeout=3, message="offer switch visible")


# --- client address ---------------------------------------------------------------------


async def test_forwarded_for_is_walked_right_to_left_past_trusted_proxies(
    gateway: httpx.AsyncClient, db: asyncpg.Pool, publisher_id: int, advertiser_id: int
) -> None:
    offer_id = await create_offer(db, advertiser_id)
    _, code = await create_smartlink(db, publisher_id, [offer_id])
    await first_click(gateway, code, headers=BROWSER)

    # Spoofed left-most entry, the real client, then our own (trusted) proxy.
    spoofed = await gateway.get(
        f"/get/{code}", headers={**BROWSER, "X-Forwarded-For": "1.2.3.4, 8.8.8.8, 127.0.0.2"}
    )
    direct = await gateway.get(f"/get/{code}", headers=BROWSER)

    row = await wait_stored(db, click_id_of(spoofed))
    assert (row["ip_text"], row["country"]) == ("8.8.8.8", "US")
    row = await wait_stored(db, click_id_of(direct))
    assert (row["ip_text"], row["country"]) == ("127.0.0.1", None)


async def test_forwarded_for_is_ignored_from_an_untrusted_peer(
    database_url: str,
    amqp_url: str,
    db: asyncpg.Pool,
    publisher_id: int,
    advertiser_id: int,
) -> None:
    settings = GatewaySettings(
        DATABASE_URL=database_url,
        AMQP_URL=amqp_url,
        CLICK_FLUSH_INTERVAL_MS=50,
        CACHE_REFRESH_SECONDS=0.2,
        TRUSTED_PROXIES="",
    )
    offer_id = await create_offer(db, advertiser_id)
    _, code = await create_smartlink(db, publisher_id, [offer_id])
    async with (
        serve_asgi(create_app(settings)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        response = await client.get(
            f"/get/{code}", headers={**BROWSER, "X-Forwarded-For": "81.2.69.160"}
        )
        assert response.status_code == 302

    row = await wait_stored(db, click_id_of(response))
    assert (row["ip_text"], row["country"]) == ("127.0.0.1", None)


# --- bots and HEAD ------------------------------------------------------------------------


async def test_bots_are_recorded_as_bots_and_still_redirected(
    gateway: httpx.AsyncClient, db: asyncpg.Pool, publisher_id: int, advertiser_id: int
) -> None:
    offer_id = await create_offer(db, advertiser_id)
    _, code = await create_smartlink(db, publisher_id, [offer_id])
    human = await first_click(gateway, code, headers=BROWSER)

    bot = await gateway.get(f"/get/{code}", headers={"User-Agent": BOT_UA})

    assert bot.status_code == 302
    bot_row = await wait_stored(db, click_id_of(bot))
    assert (bot_row["is_bot"], bot_row["method"], bot_row["device"]) == (True, "GET", "other")
    assert (await wait_stored(db, click_id_of(human)))["is_bot"] is False


async def test_head_answers_like_get_but_records_no_click(
    gateway: httpx.AsyncClient, db: asyncpg.Pool, publisher_id: int, advertiser_id: int
) -> None:
    """Link checkers and previews send HEAD: same status and Location, nothing to convert."""
    offer_id = await create_offer(db, advertiser_id)
    smartlink_id, code = await create_smartlink(db, publisher_id, [offer_id])
    first = await first_click(gateway, code, headers=BROWSER)

    head = await gateway.head(f"/get/{code}?cid=preview", headers=BROWSER)
    after = await gateway.get(f"/get/{code}?cid=after", headers=BROWSER)

    assert head.status_code == after.status_code == 302
    assert head.content == b""
    head_location = urlsplit(head.headers["location"])
    get_location = urlsplit(after.headers["location"])
    assert (head_location.scheme, head_location.netloc, head_location.path) == (
        get_location.scheme,
        get_location.netloc,
        get_location.path,
    )
    assert parse_qs(head_location.query).keys() == parse_qs(get_location.query).keys()
    # The GET after the HEAD is stored, so the HEAD would have been too: nothing was.
    await wait_stored(db, click_id_of(after))
    stored = await db.fetch(
        "SELECT click_id, external_id FROM clicks WHERE smartlink_id = $1", smartlink_id
    )
    assert sorted(r["click_id"] for r in stored) == sorted([click_id_of(first), click_id_of(after)])
    assert "preview" not in {r["external_id"] for r in stored}


# --- durability ---------------------------------------------------------------------------


async def test_every_redirected_click_is_in_postgresql_within_a_second(
    gateway: httpx.AsyncClient, db: asyncpg.Pool, publisher_id: int, advertiser_id: int
) -> None:
    offer_id = await create_offer(db, advertiser_id)
    _, code = await create_smartlink(db, publisher_id, [offer_id])
    await first_click(gateway, code, headers=BROWSER)

    responses = await asyncio.gather(
        *(gateway.get(f"/get/{code}", params={"cid": str(i)}, headers=BROWSER) for i in range(100))
    )
    ids = [click_id_of(r) for r in responses]
    assert len(set(ids)) == 100

    async def all_stored() -> bool:
        count = await db.fetchval("SELECT count(*) FROM clicks WHERE click_id = ANY($1)", ids)
        return count == 100

    # The deadline counts from the last redirect: each row is stored within 1 s of it.
    await wait_for(all_stored, timeout=1.0, interval=0.02, message="100 clicks stored")


async def test_graceful_stop_flushes_buffered_clicks(
    database_url: str,
    amqp_url: str,
    db: asyncpg.Pool,
    publisher_id: int,
    advertiser_id: int,
) -> None:
    settings = GatewaySettings(
        DATABASE_URL=database_url,
        AMQP_URL=amqp_url,
        CLICK_FLUSH_INTERVAL_MS=900,  # the longest allowed: clicks wait in the buffer
        CLICK_FLUSH_MAX_ROWS=100_000,
        CACHE_REFRESH_SECONDS=0.2,
    )
    offer_id = await create_offer(db, advertiser_id)
    _, code = await create_smartlink(db, publisher_id, [offer_id])
    app = create_app(settings)
    async with serve_asgi(app) as url, httpx.AsyncClient(base_url=url) as client:
        responses = [await client.get(f"/get/{code}", headers=BROWSER) for _ in range(30)]
        assert {r.status_code for r in responses} == {302}
        ids = [click_id_of(r) for r in responses]
        assert app.runtime.clicks.buffer.pending  # still buffered when we stop
    # serve_asgi has stopped the server: no polling, the rows must already be there.
    count = await db.fetchval("SELECT count(*) FROM clicks WHERE click_id = ANY($1)", ids)
    assert count == 30


async def test_find_click_sees_buffered_clicks_and_clicks_of_other_processes(
    database_url: str,
    amqp_url: str,
    db: asyncpg.Pool,
    publisher_id: int,
    advertiser_id: int,
) -> None:
    settings = GatewaySettings(
        DATABASE_URL=database_url,
        AMQP_URL=amqp_url,
        CLICK_FLUSH_INTERVAL_MS=900,
        CLICK_FLUSH_MAX_ROWS=100_000,
        CACHE_REFRESH_SECONDS=0.2,
        TRUSTED_PROXIES="127.0.0.0/8",
    )
    offer_id = await create_offer(db, advertiser_id)
    smartlink_id, code = await create_smartlink(db, publisher_id, [offer_id])
    app = create_app(settings)
    clicks = app.runtime.clicks
    async with serve_asgi(app) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.get(
            f"/get/{code}",
            params={"cid": "ext-1", "sub3": "s3"},
            headers={**BROWSER, "X-Forwarded-For": "81.2.69.160"},
        )
        click_id = click_id_of(response)
        assert clicks.buffer.get(click_id) is not None  # not flushed yet

        record = await clicks.find_click(click_id)

        assert record is not None
        assert (record.click_id, record.external_id, record.sub3) == (click_id, "ext-1", "s3")
        assert (record.publisher_id, record.smartlink_id, record.offer_id) == (
            publisher_id,
            smartlink_id,
            offer_id,
        )
        assert (record.ip, record.country, record.os, record.device) == (
            "81.2.69.160",
            "GB",
            "Windows",
            "desktop",
        )
        assert record.created_at == click_created_at(click_id)

        # From PostgreSQL once flushed: the same record.
        await wait_stored(db, click_id)
        assert await clicks.find_click(click_id) == record

        # A click of another gateway process, still in *its* buffer when the
        # conversion asks: found once that process flushes (here: 300 ms later).
        other_process = ClickIdGenerator(node=MAX_NODE, key=os.urandom(32))
        foreign_id = other_process.next_id()

        async def other_process_flushes() -> None:
            await asyncio.sleep(0.3)  # simulated flush delay, not synchronisation
            await db.execute(
                "INSERT INTO clicks (click_id, created_at, publisher_id, smartlink_id)"
                " VALUES ($1, $2, $3, $4)",
                foreign_id,
                click_created_at(foreign_id),
                publisher_id,
                smartlink_id,
            )

        flusher = asyncio.create_task(other_process_flushes())
        found = await clicks.find_click(foreign_id)
        await flusher
        assert found is not None
        assert found.click_id == foreign_id

        # Unknown ids: an old one answers at once, a recent one after a short wait.
        assert await clicks.find_click(123) is None
        started = time.monotonic()
        assert await clicks.find_click(other_process.next_id()) is None
        assert time.monotonic() - started < 2.5


async def test_start_prepares_daily_partitions_and_drops_expired_ones(
    database_url: str, amqp_url: str, db: asyncpg.Pool
) -> None:
    await db.execute(
        "CREATE TABLE IF NOT EXISTS clicks_20200101 PARTITION OF clicks "
        "FOR VALUES FROM ('2020-01-01 00:00+00') TO ('2020-01-02 00:00+00')"
    )
    settings = GatewaySettings(
        DATABASE_URL=database_url, AMQP_URL=amqp_url, CLICK_RETENTION_DAYS=30
    )
    async with serve_asgi(create_app(settings)):
        pass

    partitions = {
        r["relname"]
        for r in await db.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'clicks'::regclass"
        )
    }
    today = datetime.now(UTC).date()
    expected = {f"clicks_{today + timedelta(days=d):%Y%m%d}" for d in range(-1, 4)}
    assert expected <= partitions
    assert "clicks_20200101" not in partitions
    assert "clicks_default" in partitions


async def test_a_smartlink_created_elsewhere_redirects_at_once(
    database_url: str,
    amqp_url: str,
    db: asyncpg.Pool,
    publisher_id: int,
    advertiser_id: int,
) -> None:
    """Created by another process (here: straight in SQL): no 404 until the next refresh."""
    settings = GatewaySettings(
        DATABASE_URL=database_url,
        AMQP_URL=amqp_url,
        CACHE_REFRESH_SECONDS=60,  # the periodic refresh won't come to the rescue
    )
    app = create_app(settings)
    async with serve_asgi(app) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/get/not-yet", headers=BROWSER)).status_code == 404
        offer_id = await create_offer(db, advertiser_id)
        _, code = await create_smartlink(db, publisher_id, [offer_id])
        first = await client.get(f"/get/{code}?cid=new", headers=BROWSER)
        assert first.status_code == 302, first.text
        # Unknown codes still answer 404, concurrently and without error.
        misses = await asyncio.gather(
            *(client.get(f"/get/nope-{n}", headers=BROWSER) for n in range(20))
        )
        assert {r.status_code for r in misses} == {404}
