"""Benchmark fixtures: publishers, advertisers, offers, SmartLinks, postback settings.

Created through the gateway's admin API as an operator would; where an endpoint
is not there yet (404/405) the same rows are inserted with SQL that matches
``postback_core.db.models``, and the figures say which way was used.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg

from bench.common import ADMIN_TOKEN
from postback_core.security import generate_api_key, hash_api_key

ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
OFFER_URL = "https://advertiser.example/landing?click_id={click_id}"

# Five offers with country / OS / device targeting and weights; every visitor of
# the traffic mix matches at least one, crawlers included.
REALISTIC_OFFERS: list[dict[str, Any]] = [
    {
        "name": "iOS tier-1",
        "payout": "2.5000",
        "countries": ["US", "GB", "CA", "AU", "IE"],
        "os": ["iOS"],
        "devices": ["mobile", "tablet"],
        "weight": 100,
    },
    {
        "name": "Android worldwide",
        "payout": "0.8000",
        "countries": None,
        "os": ["Android"],
        "devices": ["mobile", "tablet"],
        "weight": 70,
    },
    {
        "name": "Windows desktop EU/US",
        "payout": "1.2000",
        "countries": ["US", "GB", "DE", "FR", "NL", "IE"],
        "os": ["Windows"],
        "devices": ["desktop"],
        "weight": 50,
    },
    {
        "name": "Tier-2 any device",
        "payout": "0.3000",
        "countries": ["BR", "IN", "ID", "MX", "NG", "JP"],
        "os": None,
        "devices": None,
        "weight": 30,
    },
    {
        "name": "Catch-all",
        "payout": "0.1000",
        "countries": None,
        "os": None,
        "devices": None,
        "weight": 10,
    },
]


@dataclass
class Seeded:
    publisher_id: int
    publisher_key: str
    advertiser_id: int
    advertiser_key: str
    offer_ids: list[int]
    codes: list[str]
    ways: dict[str, str] = field(default_factory=dict)  # entity -> "api" | "sql"


class Seeder:
    """Creates rows through the admin API, falling back to SQL per entity."""

    def __init__(self, api_base: str | None, dsn: str) -> None:
        self.api_base = api_base
        self.dsn = dsn
        self.ways: dict[str, str] = {}
        self._session: aiohttp.ClientSession | None = None
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> Seeder:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        self._conn = await asyncpg.connect(self.dsn)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
        if self._conn is not None:
            await self._conn.close()

    @property
    def conn(self) -> asyncpg.Connection:
        assert self._conn is not None
        return self._conn

    async def _api(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """The JSON answer, or None when the endpoint does not exist (yet)."""
        if self.api_base is None or self._session is None:
            return None
        async with self._session.request(
            method, self.api_base + path, json=body, headers=ADMIN_HEADERS
        ) as resp:
            if resp.status in (404, 405) and "/api/v1/" in path:
                text = await resp.text()
                # A 404 for a missing *item* carries a detail; a missing route says "Not Found".
                if resp.status == 405 or "Not Found" in text:
                    return None
            if resp.status >= 300:
                raise RuntimeError(f"{method} {path} -> {resp.status}: {await resp.text()}")
            answer: dict[str, Any] = await resp.json()
            return answer

    def _note(self, entity: str, way: str) -> None:
        previous = self.ways.get(entity)
        self.ways[entity] = way if previous in (None, way) else "mixed"

    async def publisher(self, name: str) -> tuple[int, str]:
        answer = await self._api("POST", "/api/v1/publishers", {"name": name})
        if answer is not None:
            self._note("publishers", "api")
            return int(answer["id"]), str(answer["api_key"])
        key = generate_api_key("pub")
        pid = await self.conn.fetchval(
            "INSERT INTO publishers (name, api_key_hash) VALUES ($1, $2) RETURNING id",
            name,
            hash_api_key(key),
        )
        self._note("publishers", "sql")
        return int(pid), key

    async def postback(self, publisher_id: int, url_template: str, token: str | None) -> None:
        answer = await self._api(
            "PUT",
            f"/api/v1/publishers/{publisher_id}/postback",
            {"url_template": url_template, "security_token": token},
        )
        if answer is not None:
            self._note("postback_settings", "api")
            return
        await self.conn.execute(
            "INSERT INTO postback_settings (publisher_id, url_template, security_token) "
            "VALUES ($1, $2, $3) ON CONFLICT (publisher_id) DO UPDATE "
            "SET url_template = EXCLUDED.url_template, security_token = EXCLUDED.security_token",
            publisher_id,
            url_template,
            token,
        )
        self._note("postback_settings", "sql")

    async def advertiser(self, name: str) -> tuple[int, str]:
        answer = await self._api("POST", "/api/v1/advertisers", {"name": name})
        if answer is not None:
            self._note("advertisers", "api")
            return int(answer["id"]), str(answer["api_key"])
        key = generate_api_key("adv")
        aid = await self.conn.fetchval(
            "INSERT INTO advertisers (name, api_key_hash) VALUES ($1, $2) RETURNING id",
            name,
            hash_api_key(key),
        )
        self._note("advertisers", "sql")
        return int(aid), key

    async def offer(self, advertiser_id: int, spec: dict[str, Any]) -> int:
        body = {"advertiser_id": advertiser_id, "url_template": OFFER_URL, **spec}
        body = {k: v for k, v in body.items() if v is not None}
        answer = await self._api("POST", "/api/v1/offers", body)
        if answer is not None:
            self._note("offers", "api")
            return int(answer["id"])
        oid = await self.conn.fetchval(
            "INSERT INTO offers (advertiser_id, name, url_template, payout, countries, os, "
            "devices, weight) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            advertiser_id,
            spec["name"],
            OFFER_URL,
            Decimal(spec["payout"]),
            spec.get("countries"),
            spec.get("os"),
            spec.get("devices"),
            spec.get("weight", 100),
        )
        self._note("offers", "sql")
        return int(oid)

    async def smartlink(self, publisher_id: int, offer_ids: list[int]) -> str:
        code = "b" + secrets.token_urlsafe(8).replace("-", "x").replace("_", "y")
        body = {
            "publisher_id": publisher_id,
            "offer_ids": offer_ids,
            "code": code,
            "fallback_url": "https://fallback.example/",
        }
        answer = await self._api("POST", "/api/v1/smartlinks", body)
        if answer is not None:
            self._note("smartlinks", "api")
            return str(answer["code"])
        sid = await self.conn.fetchval(
            "INSERT INTO smartlinks (publisher_id, code, fallback_url) VALUES ($1, $2, $3) "
            "RETURNING id",
            publisher_id,
            code,
            body["fallback_url"],
        )
        await self.conn.executemany(
            "INSERT INTO smartlink_offers (smartlink_id, offer_id) VALUES ($1, $2)",
            [(sid, oid) for oid in offer_ids],
        )
        self._note("smartlinks", "sql")
        return code


async def seed_click_scenario(
    api_base: str,
    dsn: str,
    offers: list[dict[str, Any]] | None = None,
    smartlinks: int = 1,
    postback_url: str | None = None,
    token: str | None = "bench-security-token-42",
) -> Seeded:
    """One publisher, one advertiser, its offers and ``smartlinks`` SmartLinks over them."""
    async with Seeder(api_base, dsn) as seeder:
        publisher_id, publisher_key = await seeder.publisher("Bench publisher")
        if postback_url is not None:
            await seeder.postback(publisher_id, postback_url, token)
        advertiser_id, advertiser_key = await seeder.advertiser("Bench advertiser")
        offer_ids = [
            await seeder.offer(advertiser_id, spec) for spec in (offers or REALISTIC_OFFERS)
        ]
        codes = [await seeder.smartlink(publisher_id, offer_ids) for _ in range(smartlinks)]
        return Seeded(
            publisher_id=publisher_id,
            publisher_key=publisher_key,
            advertiser_id=advertiser_id,
            advertiser_key=advertiser_key,
            offer_ids=offer_ids,
            codes=codes,
            ways=dict(seeder.ways),
        )


async def seed_postback_publishers(
    dsn: str, receiver_base: str, count: int, token: str | None = "bench-security-token-42"
) -> list[int]:
    """Publishers whose postbacks go to the loopback receiver (SQL: the gateway is not needed)."""
    template = (
        receiver_base + "/postback?click_id={click_id}&external_id={external_id}"
        "&payout={payout}&country={country}&offer={offer_id}&token={security_token}"
    )
    ids: list[int] = []
    async with Seeder(None, dsn) as seeder:
        for n in range(count):
            publisher_id, _ = await seeder.publisher(f"Bench receiver publisher {n}")
            await seeder.postback(publisher_id, template, token)
            ids.append(publisher_id)
    return ids
