"""The pages over plain HTTP: sign-in, sessions, CSRF, tenant isolation, static assets."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from postback_core.db.base import unit_of_work
from postback_core.db.models import DeadLetter, PostbackSettings, Publisher
from postback_core.security import hash_api_key
from tests.postback_dispatcher.portal_fixtures import (
    PublisherAccount,
    create_publisher,
    insert_dead_letter,
)

Db = async_sessionmaker[AsyncSession]
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF_INPUT.search(html)
    assert match, "no CSRF token in the page"
    return match.group(1)


@pytest.fixture
async def browser_like(portal_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A cookie-keeping client that does not follow redirects (we assert them)."""
    async with httpx.AsyncClient(base_url=portal_url, timeout=15) as client:
        yield client


async def sign_in_publisher(client: httpx.AsyncClient, publisher: PublisherAccount) -> str:
    login = await client.get("/portal/login")
    response = await client.post(
        "/portal/login", data={"api_key": publisher.api_key, "csrf_token": csrf_of(login.text)}
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/portal/postback"
    page = await client.get("/portal/postback")
    assert page.status_code == 200
    return csrf_of(page.text)


async def sign_in_operator(client: httpx.AsyncClient, admin_token: str) -> str:
    login = await client.get("/operator/login")
    response = await client.post(
        "/operator/login", data={"admin_token": admin_token, "csrf_token": csrf_of(login.text)}
    )
    assert response.status_code == 303
    page = await client.get("/operator/dead-letters")
    assert page.status_code == 200
    return csrf_of(page.text)


@pytest.mark.parametrize(
    ("path", "login"),
    [
        ("/portal/postback", "/portal/login"),
        ("/operator/dead-letters", "/operator/login"),
        ("/operator/dead-letters/1", "/operator/login"),
    ],
)
async def test_pages_send_strangers_to_sign_in(
    browser_like: httpx.AsyncClient, path: str, login: str
) -> None:
    response = await browser_like.get(path)
    assert response.status_code == 303
    assert response.headers["location"] == login
    async with httpx.AsyncClient(
        base_url=str(browser_like.base_url),
        cookies={"pb_publisher": "forged.value", "pb_operator": "forged.value"},
    ) as forger:
        assert (await forger.get(path)).status_code == 303


async def test_sign_in_refuses_bad_credentials_and_forms_without_csrf(
    browser_like: httpx.AsyncClient, db: Db, admin_token: str
) -> None:
    publisher = await create_publisher(db)
    login = await browser_like.get("/portal/login")
    wrong = await browser_like.post(
        "/portal/login", data={"api_key": "pub_nope", "csrf_token": csrf_of(login.text)}
    )
    assert wrong.status_code == 401
    assert "not valid" in wrong.text
    no_csrf = await browser_like.post("/portal/login", data={"api_key": publisher.api_key})
    assert no_csrf.status_code == 403
    assert "pb_publisher" not in no_csrf.cookies

    operator_login = await browser_like.get("/operator/login")
    bad_token = await browser_like.post(
        "/operator/login",
        data={"admin_token": "not-the-token", "csrf_token": csrf_of(operator_login.text)},
    )
    assert bad_token.status_code == 401
    assert (await browser_like.get("/operator/dead-letters")).status_code == 303


async def test_publisher_forms_and_fetches_need_the_session_csrf_token(
    browser_like: httpx.AsyncClient, db: Db
) -> None:
    publisher = await create_publisher(db)
    csrf = await sign_in_publisher(browser_like, publisher)
    template = "https://t.example/pb?cid={external_id}"

    forged = await browser_like.post("/portal/postback", data={"url_template": template})
    assert forged.status_code == 403
    cross_site = await browser_like.post(
        "/portal/postback",
        data={"url_template": template, "csrf_token": csrf},
        headers={"Origin": "https://evil.example"},
    )
    assert cross_site.status_code == 403
    async with db() as session:
        assert await session.get(PostbackSettings, publisher.id) is None

    preview = await browser_like.post("/portal/postback/preview", json={"url_template": template})
    assert preview.status_code == 403
    test = await browser_like.post("/portal/postback/test", json={})
    assert test.status_code == 403

    saved = await browser_like.post(
        "/portal/postback", data={"url_template": template, "csrf_token": csrf}
    )
    assert saved.status_code == 303
    async with db() as session:
        row = await session.get(PostbackSettings, publisher.id)
    assert row is not None and row.url_template == template


async def test_save_with_a_typo_answers_422_with_the_inline_error(
    browser_like: httpx.AsyncClient, db: Db
) -> None:
    publisher = await create_publisher(db)
    csrf = await sign_in_publisher(browser_like, publisher)
    response = await browser_like.post(
        "/portal/postback",
        data={"url_template": "https://t.example/?p={payot}", "csrf_token": csrf},
    )
    assert response.status_code == 422
    assert 'id="template-error" role="alert"' in response.text
    assert "unknown macro(s): {payot}" in response.text
    assert 'aria-invalid="true"' in response.text


async def test_token_can_be_kept_replaced_and_removed_from_the_page(
    browser_like: httpx.AsyncClient, db: Db
) -> None:
    publisher = await create_publisher(
        db,
        url_template="https://t.example/?t={security_token}&c={click_id}",
        security_token="tok_first_1",
    )
    csrf = await sign_in_publisher(browser_like, publisher)
    template = "https://t.example/?t={security_token}&c={click_id}&v=2"

    async def token() -> str | None:
        async with db() as session:
            row = await session.get(PostbackSettings, publisher.id)
            assert row is not None
            await session.refresh(row)
            return row.security_token

    await browser_like.post("/portal/postback", data={"url_template": template, "csrf_token": csrf})
    assert await token() == "tok_first_1"
    await browser_like.post(
        "/portal/postback",
        data={"url_template": template, "security_token": "tok_second_2", "csrf_token": csrf},
    )
    assert await token() == "tok_second_2"
    page = await browser_like.get("/portal/postback")
    assert "tok_second_2" not in page.text
    assert "Current token: <code>****nd_2</code>" in page.text
    await browser_like.post(
        "/portal/postback",
        data={"url_template": template, "token_action": "remove", "csrf_token": csrf},
    )
    assert await token() is None


async def test_a_publisher_page_shows_only_their_own_data(
    browser_like: httpx.AsyncClient, db: Db
) -> None:
    other = await create_publisher(
        db,
        url_template="https://other-tracker.example/pb?c={click_id}",
        security_token="tok_other_9",
    )
    async with unit_of_work(db) as session:
        from postback_core.db.models import DeliveryAttempt

        session.add(
            DeliveryAttempt(
                conversion_id=1,
                publisher_id=other.id,
                attempt_no=1,
                trigger="first",
                outcome="delivered",
                url_masked="https://other-tracker.example/pb?c=1",
                http_status=200,
            )
        )
    me = await create_publisher(db)
    csrf = await sign_in_publisher(browser_like, me)

    page = await browser_like.get("/portal/postback")
    fragment = await browser_like.get("/portal/postback/deliveries")
    preview = await browser_like.post(
        "/portal/postback/preview",
        json={"url_template": "https://t.example/?p={publisher_id}&t={security_token}"},
        headers={"X-CSRF-Token": csrf},
    )
    for text in (page.text, fragment.text, preview.text):
        assert "other-tracker" not in text
        assert "tok_other" not in text
    assert preview.json()["url"] == f"https://t.example/?p={me.id}&t="
    assert "No postbacks yet" in fragment.text


async def test_rotating_the_api_key_ends_the_page_session(
    browser_like: httpx.AsyncClient, db: Db
) -> None:
    publisher = await create_publisher(db)
    await sign_in_publisher(browser_like, publisher)
    async with unit_of_work(db) as session:
        row = await session.get(Publisher, publisher.id)
        assert row is not None
        row.api_key_hash = hash_api_key("pub_rotated_" + publisher.api_key)
    response = await browser_like.get("/portal/postback")
    assert response.status_code == 303


async def test_operator_actions_need_the_csrf_token(
    browser_like: httpx.AsyncClient, db: Db, admin_token: str
) -> None:
    publisher = await create_publisher(db)
    row = await insert_dead_letter(db, publisher_id=publisher.id)
    csrf = await sign_in_operator(browser_like, admin_token)

    for action in ("replay", "purge"):
        forged = await browser_like.post(f"/operator/dead-letters/{row.id}/{action}", data={})
        assert forged.status_code == 403
    bulk = await browser_like.post(
        "/operator/dead-letters/bulk",
        data={"action": "purge", "step": "run", "publisher_id": str(publisher.id)},
    )
    assert bulk.status_code == 403
    async with db() as session:
        state = await session.scalar(select(DeadLetter.state).where(DeadLetter.id == row.id))
    assert state == "dead"

    purged = await browser_like.post(
        f"/operator/dead-letters/{row.id}/purge",
        data={"csrf_token": csrf, "back": f"publisher_id={publisher.id}&evil=1"},
    )
    assert purged.status_code == 303
    assert purged.headers["location"] == (
        f"/operator/dead-letters?publisher_id={publisher.id}&done=purged&id={row.id}"
    )
    again = await browser_like.post(
        f"/operator/dead-letters/{row.id}/replay", data={"csrf_token": csrf}
    )
    assert "error=" in again.headers["location"]


async def test_operator_bulk_purge_confirms_with_a_dry_run_first(
    browser_like: httpx.AsyncClient, db: Db, admin_token: str
) -> None:
    publisher = await create_publisher(db)
    rows = [
        await insert_dead_letter(db, publisher_id=publisher.id, payout="0.30") for _ in range(2)
    ]
    csrf = await sign_in_operator(browser_like, admin_token)
    form = {"csrf_token": csrf, "action": "purge", "publisher_id": str(publisher.id)}

    confirm = await browser_like.post("/operator/dead-letters/bulk", data=form)
    assert confirm.status_code == 200
    assert 'id="dry-run-count">2<' in confirm.text
    assert 'id="dry-run-payout">$0.60<' in confirm.text
    async with db() as session:
        states = (
            await session.scalars(
                select(DeadLetter.state).where(DeadLetter.id.in_([r.id for r in rows]))
            )
        ).all()
    assert states == ["dead", "dead"]

    done = await browser_like.post("/operator/dead-letters/bulk", data=form | {"step": "run"})
    assert done.status_code == 303
    assert "done=bulk-purged&count=2" in done.headers["location"]


async def test_pages_load_only_their_own_static_assets(
    browser_like: httpx.AsyncClient, db: Db
) -> None:
    publisher = await create_publisher(db)
    await sign_in_publisher(browser_like, publisher)
    page = (await browser_like.get("/portal/postback")).text
    assets = re.findall(r'(?:src|href)="([^"#]+\.(?:css|js|svg))"', page)
    assert assets, "the page references its stylesheet and scripts"
    assert all(a.startswith("/static/") for a in assets), assets
    for asset in set(assets):
        response = await browser_like.get(asset)
        assert response.status_code == 200, asset
    css = await browser_like.get("/static/app.css")
    assert css.headers["content-type"].startswith("text/css")
    assert "<svg" in page and 'role="img"' in page


async def test_the_reason_filter_offers_exactly_the_stored_reasons(
    browser_like: httpx.AsyncClient, db: Db, admin_token: str
) -> None:
    from postback_core.enums import DeadLetterReason

    publisher = await create_publisher(db)
    refused = await insert_dead_letter(db, publisher_id=publisher.id, reason="permanent_http_4xx")
    await sign_in_operator(browser_like, admin_token)

    page = await browser_like.get("/operator/dead-letters")
    select = page.text.split('id="f-reason"')[1].split("</select>")[0]
    offered = re.findall(r'<option value="([^"]*)"', select)
    assert offered == ["", *(r.value for r in DeadLetterReason)]
    assert 'value="permanent"' not in page.text

    filtered = await browser_like.get(
        "/operator/dead-letters",
        params={"reason": "permanent_http_4xx", "publisher_id": str(publisher.id)},
    )
    assert filtered.status_code == 200
    assert f"/operator/dead-letters/{refused.id}" in filtered.text
    unknown = await browser_like.get("/operator/dead-letters", params={"reason": "permanent"})
    assert unknown.status_code == 422
    assert "Filters ignored: reason" in unknown.text
