"""Small plain factories and helpers for the click-path tests (rows straight into the DB)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx

DESKTOP_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
ANDROID_PHONE_UA = (
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Mobile Safari/537.36"
)
IPAD_UA = (
    "Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.0 Mobile/15E148 Safari/604.1"
)
IPHONE_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
)
BOT_UA = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
BROWSER = {"User-Agent": DESKTOP_UA}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class Catalog:
    publisher_id: int
    advertiser_id: int


async def create_publisher(db: asyncpg.Pool, *, is_active: bool = True) -> int:
    publisher_id: int = await db.fetchval(
        "INSERT INTO publishers (name, api_key_hash, is_active) VALUES ($1, $2, $3) RETURNING id",
        unique("pub"),
        uuid.uuid4().hex + uuid.uuid4().hex,
        is_active,
    )
    return publisher_id


async def create_advertiser(db: asyncpg.Pool) -> int:
    advertiser_id: int = await db.fetchval(
        "INSERT INTO advertisers (name, api_key_hash) VALUES ($1, $2) RETURNING id",
        unique("adv"),
        uuid.uuid4().hex + uuid.uuid4().hex,
    )
    return advertiser_id


async def create_offer(
    db: asyncpg.Pool,
    advertiser_id: int,
    url_template: str | None = None,
    *,
    countries: Sequence[str] | None = None,
    os: Sequence[str] | None = None,
    devices: Sequence[str] | None = None,
    weight: int = 100,
    is_active: bool = True,
) -> int:
    offer_id: int = await db.fetchval(
        """
        INSERT INTO offers (advertiser_id, name, url_template, payout, countries, os, devices,
                            weight, is_active)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id
        """,
        advertiser_id,
        unique("offer"),
        "placeholder",
        Decimal("0.50"),
        list(countries) if countries is not None else None,
        list(os) if os is not None else None,
        list(devices) if devices is not None else None,
        weight,
        is_active,
    )
    template = url_template or f"https://adv.example/o{offer_id}?click={{click_id}}"
    await db.execute(
        "UPDATE offers SET url_template = $2 WHERE id = $1",
        offer_id,
        template.replace("{offer}", str(offer_id)),
    )
    return offer_id


async def create_smartlink(
    db: asyncpg.Pool,
    publisher_id: int,
    offer_ids: Sequence[int],
    *,
    fallback_url: str | None = None,
    is_active: bool = True,
) -> tuple[int, str]:
    code = unique("sl")
    async with db.acquire() as conn, conn.transaction():
        smartlink_id: int = await conn.fetchval(
            """
            INSERT INTO smartlinks (publisher_id, code, fallback_url, is_active)
            VALUES ($1, $2, $3, $4) RETURNING id
            """,
            publisher_id,
            code,
            fallback_url,
            is_active,
        )
        for offer_id in offer_ids:
            await conn.execute(
                "INSERT INTO smartlink_offers (smartlink_id, offer_id) VALUES ($1, $2)",
                smartlink_id,
                offer_id,
            )
    return smartlink_id, code


def click_id_of(response: httpx.Response, param: str = "click") -> int:
    """The internal click id our test offers put in their landing URL."""
    query = parse_qs(urlsplit(response.headers["location"]).query)
    return int(query[param][0])


def offer_of(response: httpx.Response) -> int | None:
    """Our test offers land on https://adv.example/o<offer_id>; the fallback elsewhere."""
    path = urlsplit(response.headers["location"]).path
    return int(path[2:]) if path.startswith("/o") else None


async def stored_click(db: asyncpg.Pool, click_id: int) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await db.fetchrow(
        "SELECT *, host(ip) AS ip_text FROM clicks WHERE click_id = $1", click_id
    )
    return row
