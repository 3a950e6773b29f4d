"""The secret scanner: one run of the whole product, then a search for every secret it used.

Distinctive secrets (the admin token, the publisher's and advertiser's API
keys, the publisher's security token, the password in the postback URL's
``user:password@``) go through a real gateway, dispatcher, broker and database.
The publisher's tracker echoes the request line and headers in its body (the
token comes back percent-encoded, the password as ``Authorization: Basic``);
one publisher's tracker fails, so a dead letter with its history exists too.

Then none of the secrets, in any encoding, may appear in a log line of the
run, a page the portal or the operator pages show, an API answer, or a text or
JSON column of the database. Two columns are where the secrets live and are
not searched: ``postback_settings.security_token`` and ``.url_template`` (the
dispatcher needs them to sign and send). The API keys are stored only hashed,
the admin token never; the one answer that hands out a new API key (creation)
is the only place it is shown.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest
from aiohttp import web
from typer.testing import CliRunner

from click_gateway.app import create_app as create_gateway
from click_gateway.settings import GatewaySettings
from postback_core.db.base import asyncpg_dsn
from postback_dispatcher.cli import cli
from tests.postback_dispatcher.conftest import running_dispatcher
from tests.support.infra import (
    create_test_database,
    create_test_vhost,
    delete_vhost,
    drop_database,
)
from tests.support.polling import wait_for
from tests.support.secrets import basic_auth_form, leaks
from tests.support.servers import ReceivedRequest, Receiver, run_receiver, serve_asgi

ADMIN_TOKEN = "scan-ADMIN/t0ken+Value=0123456789"
SECURITY_TOKEN = "scan-TOKEN/s3cr3t+Value y~42"
URL_USER = "scanuser"
URL_PASSWORD = "scan-PASS/w0rd@99-long"
URL_PASSWORD_IN_URL = "scan-PASS%2Fw0rd%4099-long"
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')
ANDROID_PHONE = "Mozilla/5.0 (Linux; Android 14; Pixel 8) Chrome/126.0.0.0 Mobile Safari/537.36"
TEXT_TYPES = ("text", "character varying", "character", "json", "jsonb")
WHERE_SECRETS_LIVE = {
    ("postback_settings", "security_token"),
    ("postback_settings", "url_template"),
}


def echo(status: int) -> Callable[[ReceivedRequest], web.Response]:
    def respond(request: ReceivedRequest) -> web.Response:
        lines = [f"{request.method} {request.raw_url} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in request.headers.items()]
        return web.Response(status=status, text="\r\n".join(lines))

    return respond


@dataclass
class Run:
    database_url: str
    gateway: httpx.AsyncClient
    dispatcher: httpx.AsyncClient
    delivered: Receiver
    failing: Receiver
    shown: list[str] = field(default_factory=list)  # every page and API answer seen


@pytest.fixture
async def run() -> AsyncIterator[Run]:
    database_url = await create_test_database("postback_scan")
    vhost, amqp_url = await create_test_vhost("scan")
    gateway_settings = GatewaySettings(
        DATABASE_URL=database_url,
        AMQP_URL=amqp_url,
        ADMIN_TOKEN=ADMIN_TOKEN,
        TRUSTED_PROXIES="127.0.0.1/32",
        CLICK_FLUSH_INTERVAL_MS=50,
        CACHE_REFRESH_SECONDS=0.2,
    )
    try:
        async with (
            run_receiver() as delivered,
            run_receiver() as failing,
            running_dispatcher(database_url, amqp_url, ADMIN_TOKEN=ADMIN_TOKEN) as dispatcher,
            serve_asgi(create_gateway(gateway_settings)) as gateway_url,
            httpx.AsyncClient(base_url=gateway_url, timeout=15) as gateway,
            httpx.AsyncClient(base_url=dispatcher.base_url, timeout=15) as dispatcher_client,
        ):
            delivered.responder = echo(200)
            failing.responder = echo(503)  # retried, then dead-lettered as exhausted
            yield Run(database_url, gateway, dispatcher_client, delivered, failing)
    finally:
        await delete_vhost(vhost)
        await drop_database(database_url)


def template_for(receiver: Receiver) -> str:
    host = receiver.base_url.removeprefix("http://")
    return (
        f"http://{URL_USER}:{URL_PASSWORD_IN_URL}@{host}/pb?click_id={{click_id}}"
        "&t={security_token}&sum={payout}&ext={external_id}"
    )


def csrf_of(html: str) -> str:
    match = CSRF_INPUT.search(html)
    assert match, "no CSRF token in the page"
    return match.group(1)


async def shown(run: Run, response: httpx.Response) -> httpx.Response:
    assert response.status_code < 500, (response.request.url, response.text)
    run.shown.append(f"{response.request.url}\n{response.headers}\n{response.text}")
    return response


async def database_text(database_url: str) -> str:
    """Every value of every text-like column (but where the secrets live), as one text."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        columns = await conn.fetch(
            "SELECT c.table_name, c.column_name FROM information_schema.columns c"
            " JOIN information_schema.tables t"
            "   ON t.table_schema = c.table_schema AND t.table_name = c.table_name"
            " WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'"
            " AND c.data_type = ANY($1::text[])",
            list(TEXT_TYPES),
        )
        searched = [(r["table_name"], r["column_name"]) for r in columns]
        assert ("delivery_attempts", "response_excerpt") in searched
        assert ("dead_letters", "history") in searched
        values = []
        for table, column in searched:
            if (table, column) in WHERE_SECRETS_LIVE:
                continue
            rows = await conn.fetch(f'SELECT "{column}"::text AS v FROM "{table}"')
            values += [f"{table}.{column}: {r['v']}" for r in rows if r["v"] is not None]
        return "\n".join(values)
    finally:
        await conn.close()


async def test_no_secret_leaks_into_logs_pages_answers_or_the_database(
    run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    gateway = run.gateway

    async def create(path: str, body: dict[str, object]) -> dict[str, object]:
        response = await gateway.post(path, json=body, headers=admin)
        assert response.status_code == 201, response.text
        created: dict[str, object] = response.json()  # hands out the new key: not scanned
        return created

    advertiser = await create("/api/v1/advertisers", {"name": "scan-adv"})
    offer = await create(
        "/api/v1/offers",
        {
            "advertiser_id": advertiser["id"],
            "name": "scan-offer",
            "url_template": "https://advertiser.example/i?clickid={click_id}",
            "payout": "1.5000",
        },
    )
    publishers = []
    for name, receiver in (("scan-ok", run.delivered), ("scan-dead", run.failing)):
        publisher = await create("/api/v1/publishers", {"name": name})
        saved = await gateway.put(
            f"/api/v1/publishers/{publisher['id']}/postback",
            json={"url_template": template_for(receiver), "security_token": SECURITY_TOKEN},
            headers=admin,
        )
        await shown(run, saved)
        smartlink = await create(
            "/api/v1/smartlinks", {"publisher_id": publisher["id"], "offer_ids": [offer["id"]]}
        )
        publishers.append((publisher, smartlink))
    secrets = [
        ADMIN_TOKEN,
        SECURITY_TOKEN,
        URL_PASSWORD,
        basic_auth_form(URL_USER, URL_PASSWORD),
        str(advertiser["api_key"]),
        *(str(p["api_key"]) for p, _ in publishers),
    ]

    # Traffic: a click and a conversion per publisher.
    for _publisher, smartlink in publishers:

        async def redirected(code: object = smartlink["code"]) -> httpx.Response | None:
            response = await gateway.get(
                f"/get/{code}",
                params={"cid": "scan-ext"},
                headers={"X-Forwarded-For": "81.2.69.160", "User-Agent": ANDROID_PHONE},
            )
            return response if response.status_code == 302 else None

        click = await wait_for(redirected, timeout=10, message="the SmartLink to redirect")
        assert click is not None
        click_id = parse_qs(urlsplit(click.headers["location"]).query)["clickid"][0]
        conversion = await gateway.post(
            "/api/v1/conversions",
            json={"click_id": click_id},
            headers={"X-Api-Key": str(advertiser["api_key"])},
        )
        assert conversion.status_code == 201, conversion.text

    dispatcher = run.dispatcher

    async def dead_letters() -> list[dict[str, object]]:
        response = await dispatcher.get("/api/v1/dead-letters", headers=admin)
        items: list[dict[str, object]] = response.json()["items"]
        return items

    [dead] = await wait_for(dead_letters, timeout=30, message="the failing postback's dead letter")
    await wait_for(
        lambda: asyncio.sleep(0, result=len(run.delivered.matching("/pb")) >= 1),
        message="the delivered postback",
    )
    assert run.delivered.requests[0].headers["Authorization"].startswith("Basic ")
    assert dead["reason"] == "exhausted"

    # What the publisher sees: API and the Postback Settings page (with a test postback).
    ok_publisher = publishers[0][0]
    key = {"X-Api-Key": str(ok_publisher["api_key"])}
    for method, path in (
        ("GET", "/api/v1/me/postback"),
        ("GET", "/api/v1/me/postbacks"),
        ("POST", "/api/v1/me/postback/test"),
    ):
        await shown(run, await dispatcher.request(method, path, headers=key))
    await shown(
        run,
        await dispatcher.post(
            "/api/v1/me/postback/preview",
            json={"url_template": template_for(run.delivered), "security_token": SECURITY_TOKEN},
            headers=key,
        ),
    )
    login = await shown(run, await dispatcher.get("/portal/login"))
    await dispatcher.post(
        "/portal/login",
        data={"api_key": str(ok_publisher["api_key"]), "csrf_token": csrf_of(login.text)},
    )
    page = await shown(run, await dispatcher.get("/portal/postback"))
    csrf = csrf_of(page.text)
    await shown(
        run, await dispatcher.post("/portal/postback/test", json={}, headers={"X-CSRF-Token": csrf})
    )
    await shown(run, await dispatcher.get("/portal/postback/deliveries"))
    await shown(run, await dispatcher.get("/portal/postback"))
    await dispatcher.post("/portal/logout", data={"csrf_token": csrf})

    # What operators see: API, CLI and the Dead letters pages.
    for path in (
        "/api/v1/dead-letters",
        f"/api/v1/dead-letters/{dead['id']}",
        "/api/v1/dead-letters/stats",
    ):
        await shown(run, await dispatcher.get(path, headers=admin))
    for publisher, _ in publishers:
        for path in (
            f"/api/v1/publishers/{publisher['id']}",
            f"/api/v1/publishers/{publisher['id']}/postback",
        ):
            await shown(run, await gateway.get(path, headers=admin))
    await shown(run, await gateway.get("/api/v1/publishers", headers=admin))
    for args in (["list", "--all", "--json"], ["show", str(dead["id"])]):
        result = await asyncio.to_thread(
            CliRunner().invoke,
            cli,
            ["dlq", "--url", str(dispatcher.base_url), "--token", ADMIN_TOKEN, *args],
            env={"COLUMNS": "200"},
        )
        assert result.exit_code == 0, result.output
        run.shown.append(result.output)
    login = await shown(run, await dispatcher.get("/operator/login"))
    await dispatcher.post(
        "/operator/login", data={"admin_token": ADMIN_TOKEN, "csrf_token": csrf_of(login.text)}
    )
    await shown(run, await dispatcher.get("/operator/dead-letters"))
    await shown(run, await dispatcher.get(f"/operator/dead-letters/{dead['id']}"))

    # The search.
    assert any("Authorization: Basic ****" in text for text in run.shown)  # the echo was seen
    for text in run.shown:
        assert leaks(text, secrets) == [], text[:300]
    log_text = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert caplog.records, "the run logged nothing: the capture is not working"
    assert leaks(log_text, secrets) == []
    stored = await database_text(run.database_url)
    assert "Authorization: Basic ****" in stored
    assert leaks(stored, secrets) == []
