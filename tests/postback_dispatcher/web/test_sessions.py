"""Page sessions live on the server: signing out ends every copy of the cookie."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from postback_core.db.models import DeadLetter, PostbackSettings
from tests.postback_dispatcher.conftest import fresh_vhost, running_dispatcher
from tests.postback_dispatcher.portal_fixtures import create_publisher, insert_dead_letter
from tests.postback_dispatcher.web.test_pages_http import (
    csrf_of,
    sign_in_operator,
    sign_in_publisher,
)

Db = async_sessionmaker[AsyncSession]
TEMPLATE = "https://t.example/pb?cid={external_id}"


@pytest.fixture
async def client(portal_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=portal_url, timeout=15) as c:
        yield c


def copy_of(client: httpx.AsyncClient, cookie: str) -> httpx.AsyncClient:
    """A second browser holding a stolen copy of the cookie."""
    return httpx.AsyncClient(
        base_url=str(client.base_url), cookies={cookie: client.cookies[cookie]}, timeout=15
    )


async def test_a_copied_publisher_cookie_is_refused_after_logout(
    client: httpx.AsyncClient, db: Db
) -> None:
    publisher = await create_publisher(db)
    csrf = await sign_in_publisher(client, publisher)
    async with copy_of(client, "pb_publisher") as thief:
        assert (await thief.get("/portal/postback")).status_code == 200  # the copy works...

        out = await client.post("/portal/logout", data={"csrf_token": csrf})
        assert out.status_code == 303 and out.headers["location"] == "/portal/login"

        # ...until the owner signs out: a state-changing request with it is refused.
        replay = await thief.post(
            "/portal/postback", data={"url_template": TEMPLATE, "csrf_token": csrf}
        )
        assert replay.status_code == 303 and replay.headers["location"] == "/portal/login"
        preview = await thief.post(
            "/portal/postback/preview",
            json={"url_template": TEMPLATE},
            headers={"X-CSRF-Token": csrf},
        )
        assert preview.status_code == 401
        assert (await thief.get("/portal/postback")).status_code == 303
    async with db() as session:
        assert await session.get(PostbackSettings, publisher.id) is None


async def test_a_copied_operator_cookie_is_refused_after_logout(
    client: httpx.AsyncClient, db: Db, admin_token: str
) -> None:
    publisher = await create_publisher(db)
    row = await insert_dead_letter(db, publisher_id=publisher.id)
    csrf = await sign_in_operator(client, admin_token)
    async with copy_of(client, "pb_operator") as thief:
        out = await client.post("/operator/logout", data={"csrf_token": csrf})
        assert out.status_code == 303
        replay = await thief.post(
            f"/operator/dead-letters/{row.id}/purge", data={"csrf_token": csrf}
        )
        assert replay.status_code == 303 and replay.headers["location"] == "/operator/login"
    async with db() as session:
        state = await session.scalar(select(DeadLetter.state).where(DeadLetter.id == row.id))
    assert state == "dead"


async def test_every_sign_in_starts_a_new_session_and_never_adopts_a_planted_cookie(
    client: httpx.AsyncClient, db: Db, pg: asyncpg.Pool
) -> None:
    publisher = await create_publisher(db)
    planted = "attacker-chosen-session-id-0123456789abcdefghij"
    client.cookies.set("pb_publisher", planted, domain="127.0.0.1")
    login = await client.get("/portal/login")
    pre_session = client.cookies["pb_login_csrf"]
    await client.post(
        "/portal/login", data={"api_key": publisher.api_key, "csrf_token": csrf_of(login.text)}
    )
    first = client.cookies["pb_publisher"]
    assert first not in (planted, pre_session)
    async with httpx.AsyncClient(
        base_url=str(client.base_url), cookies={"pb_publisher": planted}
    ) as attacker:
        assert (await attacker.get("/portal/postback")).status_code == 303

    # Signing in again (same browser, e.g. from a second tab's form) rotates the id;
    # the previous one stops working.
    async with httpx.AsyncClient(base_url=str(client.base_url)) as tab:
        form = await tab.get("/portal/login")
        client.cookies.set("pb_login_csrf", tab.cookies["pb_login_csrf"], domain="127.0.0.1")
    again = await client.post(
        "/portal/login", data={"api_key": publisher.api_key, "csrf_token": csrf_of(form.text)}
    )
    assert again.status_code == 303
    second = client.cookies["pb_publisher"]
    assert second != first
    async with httpx.AsyncClient(
        base_url=str(client.base_url), cookies={"pb_publisher": first}
    ) as old:
        assert (await old.get("/portal/postback")).status_code == 303

    # Only a hash of the id is stored.
    stored = await pg.fetch("SELECT * FROM web_sessions WHERE publisher_id = $1", publisher.id)
    hashes = {r["id_hash"] for r in stored}
    assert hashlib.sha256(second.encode()).hexdigest() in hashes
    assert all(second not in str(dict(r)) for r in stored)


async def test_the_cookie_is_secure_only_when_a_trusted_proxy_says_https(
    database_url: str, db: Db, client: httpx.AsyncClient
) -> None:
    publisher = await create_publisher(db)

    async def sign_in_cookie(base_url: str, headers: dict[str, str]) -> str:
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=15) as browser:
            login = await browser.get("/portal/login")
            response = await browser.post(
                "/portal/login",
                data={"api_key": publisher.api_key, "csrf_token": csrf_of(login.text)},
            )
            assert response.status_code == 303, response.text
            [cookie] = [c for c in response.headers.get_list("set-cookie") if "pb_publisher=" in c]
            return cookie.lower()

    https = {"X-Forwarded-Proto": "https"}
    # The shared dispatcher trusts no proxy: a client claiming https changes nothing.
    assert "secure" not in await sign_in_cookie(str(client.base_url), https)
    async with (
        fresh_vhost() as amqp_url,
        running_dispatcher(database_url, amqp_url, TRUSTED_PROXIES="127.0.0.1/32") as proxied,
    ):
        assert "; secure" in await sign_in_cookie(proxied.base_url, https)
        assert "secure" not in await sign_in_cookie(proxied.base_url, {})
        # Behind the TLS proxy the browser's Origin is https://…: posts are still same-origin.
        # (httpx keeps a Secure cookie off plain http, so it is carried by hand here.)
        host = proxied.base_url.removeprefix("http://")
        async with httpx.AsyncClient(base_url=proxied.base_url, headers=https) as browser:
            login = await browser.get("/portal/login")
            signed_in = await browser.post(
                "/portal/login",
                data={"api_key": publisher.api_key, "csrf_token": csrf_of(login.text)},
            )
            session_cookie = {"Cookie": f"pb_publisher={signed_in.cookies['pb_publisher']}"}
            page = await browser.get("/portal/postback", headers=session_cookie)
            assert page.status_code == 200
            saved = await browser.post(
                "/portal/postback",
                data={"url_template": TEMPLATE, "csrf_token": csrf_of(page.text)},
                headers=session_cookie | {"Origin": f"https://{host}"},
            )
            assert saved.status_code == 303, saved.text
