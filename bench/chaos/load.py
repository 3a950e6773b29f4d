"""Steady load through the real APIs: a click, then its conversion, on random gateways.

Set-up goes through the gateway's admin API (publisher with a postback URL to the
receiver, advertiser, offer, SmartLink). Then, at a fixed rate (open loop: a slow
answer does not slow the schedule), each conversion is one ``GET /get/{code}`` on
a random gateway (the click id is read from the 302's ``Location``) and, once the
click had time to be flushed, ``POST /api/v1/conversions`` with the advertiser's key
on a random gateway. Connection errors, timeouts, 5xx and a 404 (the click not yet
written) are retried a bounded number of times: a conversion that was never
accepted is not lost, it is counted apart. 201 is accepted; 200 ("repeat") means an
earlier try was stored but its answer did not reach us, so it is accepted too.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import aiohttp

from bench.chaos.services import Service

GONE_SHARE = 0.02  # conversions whose postback the receiver refuses (410): dead letters
CLICK_TRIES = 6
CONVERSION_TRIES = 12
RETRY_PAUSE_SECONDS = 0.5
REQUEST_TIMEOUT_SECONDS = 5.0
FLUSH_GRACE_SECONDS = 0.6  # click flush interval is 100 ms; give the COPY time to land
MAX_IN_FLIGHT = 300
OFFER_URL = "http://offer.example/app?clickid={click_id}"


@dataclass
class Entities:
    code: str
    advertiser_key: str
    publisher_id: int


@dataclass
class LoadStats:
    """What the load saw; click ids are the gateway's 64-bit ids."""

    launched: int = 0
    clicks_redirected: list[int] = field(default_factory=list)
    click_answers: dict[int, tuple[str, float]] = field(default_factory=dict)  # id -> (gw, t)
    clicks_failed: int = 0
    accepted: set[int] = field(default_factory=set)
    accepted_after_retry: int = 0
    accepted_as_repeat: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    started_at: float = 0.0
    ended_at: float = 0.0
    max_in_flight: int = 0
    late_launches: int = 0


async def _request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    **kwargs: object,
) -> tuple[int, dict[str, str], bytes]:
    async with session.request(method, url, allow_redirects=False, **kwargs) as resp:  # type: ignore[arg-type]
        return resp.status, dict(resp.headers), await resp.read()


async def set_up(gateways: list[Service], receiver: Service, admin_token: str) -> Entities:
    """Create the fixtures through the admin API; wait until every gateway serves the link."""
    headers = {"Authorization": f"Bearer {admin_token}"}
    base = gateways[0].base
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:

        async def post(
            path: str, body: dict[str, object], method: str = "POST"
        ) -> dict[str, object]:
            async with session.request(method, base + path, json=body) as resp:
                answer: dict[str, object] = await resp.json()
                if resp.status not in (200, 201):
                    raise RuntimeError(f"{method} {path} -> {resp.status}: {answer}")
                return answer

        publisher = await post("/api/v1/publishers", {"name": "Chaos Media"})
        publisher_id = int(str(publisher["id"]))
        template = receiver.base + "/pb?click_id={click_id}&cid={external_id}&payout={payout}"
        await post(
            f"/api/v1/publishers/{publisher_id}/postback",
            {"url_template": template, "security_token": "chaos-token-0123456789"},
            method="PUT",
        )
        advertiser = await post("/api/v1/advertisers", {"name": "Chaos Games"})
        offer = await post(
            "/api/v1/offers",
            {
                "advertiser_id": advertiser["id"],
                "name": "Chaos install",
                "url_template": OFFER_URL,
                "payout": "0.75",
            },
        )
        smartlink = await post(
            "/api/v1/smartlinks", {"publisher_id": publisher_id, "offer_ids": [offer["id"]]}
        )
    code = str(smartlink["code"])
    # Each gateway refreshes its SmartLink cache every few seconds: wait for both.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for gw in gateways:
            deadline = time.monotonic() + 60
            while True:
                status, _, _ = await _request(session, "GET", f"{gw.base}/get/{code}?cid=warmup")
                if status == 302:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{gw.name} does not serve SmartLink {code}")
                await asyncio.sleep(0.2)
    return Entities(code=code, advertiser_key=str(advertiser["api_key"]), publisher_id=publisher_id)


class Load:
    def __init__(
        self,
        gateways: list[Service],
        entities: Entities,
        rng: random.Random,
        stats: LoadStats,
    ) -> None:
        self.gateways = gateways
        self.entities = entities
        self.rng = rng
        self.stats = stats
        self._in_flight: set[asyncio.Task[None]] = set()

    async def run(self, count: int, rate: float, keep_going: asyncio.Event | None = None) -> None:
        """``count`` conversions at ``rate`` per second; then, while ``keep_going`` is set,
        more at the same rate (so faults still running see load), at most 2 x ``count``."""
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
        connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT, force_close=False)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            self.stats.started_at = time.monotonic()
            interval = 1.0 / rate
            n = 0
            while n < count or (keep_going is not None and keep_going.is_set() and n < 2 * count):
                due = self.stats.started_at + n * interval
                now = time.monotonic()
                if due > now:
                    await asyncio.sleep(due - now)
                elif now - due > 1.0:
                    self.stats.late_launches += 1
                if len(self._in_flight) >= MAX_IN_FLIGHT:
                    await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
                gone = self.rng.random() < GONE_SHARE
                click_gws = [self.rng.choice(self.gateways) for _ in range(CLICK_TRIES)]
                conversion_gws = [self.rng.choice(self.gateways) for _ in range(CONVERSION_TRIES)]
                task = asyncio.create_task(self._one(session, n, gone, click_gws, conversion_gws))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
                self.stats.max_in_flight = max(self.stats.max_in_flight, len(self._in_flight))
                n += 1
                self.stats.launched = n
            if self._in_flight:
                await asyncio.wait(self._in_flight)
            self.stats.ended_at = time.monotonic()

    async def _one(
        self,
        session: aiohttp.ClientSession,
        n: int,
        gone: bool,
        click_gws: list[Service],
        conversion_gws: list[Service],
    ) -> None:
        cid = f"gone-{n}" if gone else f"c{n}"
        click_id = await self._click(session, click_gws, cid)
        if click_id is None:
            self.stats.clicks_failed += 1
            return
        await asyncio.sleep(FLUSH_GRACE_SECONDS)
        await self._convert(session, conversion_gws, click_id)

    async def _click(
        self, session: aiohttp.ClientSession, gateways: list[Service], cid: str
    ) -> int | None:
        """A visitor whose click failed clicks again; each try on a random gateway."""
        for gw in gateways:
            url = f"{gw.base}/get/{self.entities.code}?cid={cid}"
            try:
                status, headers, _ = await _request(session, "GET", url)
            except (aiohttp.ClientError, OSError, TimeoutError):
                status, headers = 0, {}
            if status == 302:
                location = headers.get("Location", "")
                values = parse_qs(urlsplit(location).query).get("clickid")
                if not values:
                    return None
                click_id = int(values[0])
                self.stats.clicks_redirected.append(click_id)
                self.stats.click_answers[click_id] = (gw.name, time.monotonic())
                return click_id
            await asyncio.sleep(RETRY_PAUSE_SECONDS)
        return None

    async def _convert(
        self, session: aiohttp.ClientSession, gateways: list[Service], click_id: int
    ) -> None:
        headers = {"X-Api-Key": self.entities.advertiser_key}
        last = "no answer"
        for attempt, gw in enumerate(gateways):
            try:
                status, _, body = await _request(
                    session,
                    "POST",
                    f"{gw.base}/api/v1/conversions",
                    json={"click_id": click_id},
                    headers=headers,
                )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                status, body = 0, type(exc).__name__.encode()
            if status in (200, 201):
                self.stats.accepted.add(click_id)
                if attempt:
                    self.stats.accepted_after_retry += 1
                if status == 200:
                    self.stats.accepted_as_repeat += 1
                return
            last = str(status) if status else body.decode(errors="replace")
            if status and status < 500 and status != 404:
                break  # refused for good (4xx other than "click not written yet")
            await asyncio.sleep(RETRY_PAUSE_SECONDS * (1 + attempt / 2))
        self.stats.refused[last] += 1
