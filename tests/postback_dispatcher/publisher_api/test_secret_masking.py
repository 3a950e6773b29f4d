"""Secrets never reach the attempt log, dead letters or answers, however a receiver echoes them.

The receiver here echoes the request line and headers in its body (many
trackers do in their error pages), so the token arrives back percent-encoded
and the URL's ``user:password@`` arrives back as an ``Authorization: Basic``
header.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import asyncpg
import httpx
import pytest
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from postback_core.db.models import PostbackSettings
from tests.postback_dispatcher.conftest import DispatcherHandle, make_event
from tests.postback_dispatcher.portal_fixtures import create_publisher
from tests.support.polling import wait_for
from tests.support.secrets import basic_auth_form, leaks
from tests.support.servers import ReceivedRequest, Receiver, run_receiver

TOKEN = "tok_Echo/Secret+Value 42~xyz"
USER = "alice"
PASSWORD = "pw-Echo/secret@9-long"
PASSWORD_IN_URL = "pw-Echo%2Fsecret%409-long"
SECRETS = (TOKEN, PASSWORD, basic_auth_form(USER, PASSWORD))
Db = async_sessionmaker[AsyncSession]


def echo(status: int) -> Callable[[ReceivedRequest], web.Response]:
    def respond(request: ReceivedRequest) -> web.Response:
        lines = [f"{request.method} {request.raw_url} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in request.headers.items()]
        return web.Response(status=status, text="\r\n".join(lines))

    return respond


@pytest.fixture
async def echoing() -> AsyncIterator[Receiver]:
    async with run_receiver() as receiver:
        yield receiver


def template_for(receiver: Receiver) -> str:
    host = receiver.base_url.removeprefix("http://")
    return (
        f"http://{USER}:{PASSWORD_IN_URL}@{host}/pb?c={{click_id}}&t={{security_token}}"
        "&sum={payout}"
    )


async def test_a_test_postback_echoed_back_shows_no_secret(
    api: httpx.AsyncClient, db: Db, echoing: Receiver
) -> None:
    echoing.responder = echo(200)
    publisher = await create_publisher(db, url_template=template_for(echoing), security_token=TOKEN)
    headers = {"X-Api-Key": publisher.api_key}

    answer = await api.post("/api/v1/me/postback/test", headers=headers)

    assert answer.status_code == 200, answer.text
    [received] = echoing.matching("/pb")
    assert received.headers["Authorization"] == f"Basic {basic_auth_form(USER, PASSWORD)}"
    body = answer.json()
    assert "Authorization: Basic ****" in body["response_excerpt"]
    assert body["url"].startswith(f"http://{USER}:****@127.0.0.1")
    assert leaks(answer.text, SECRETS) == []
    logged = await api.get("/api/v1/me/postbacks", headers=headers)
    assert logged.json()["items"][0]["response_excerpt"] == body["response_excerpt"]
    assert leaks(logged.text, SECRETS) == []


async def test_a_dead_lettered_postback_stores_and_shows_no_secret(
    dispatcher: DispatcherHandle,
    pg: asyncpg.Pool,
    api: httpx.AsyncClient,
    db: Db,
    echoing: Receiver,
    admin_headers: dict[str, str],
) -> None:
    echoing.responder = echo(400)  # refused: dead-lettered at once, echo stored
    publisher = await create_publisher(db, url_template=template_for(echoing), security_token=TOKEN)
    event = make_event(publisher.id)
    await dispatcher.publish(event)

    dead = await wait_for(
        lambda: pg.fetchrow(
            "SELECT * FROM dead_letters WHERE conversion_id = $1", event.conversion_id
        ),
        message="dead letter archived",
    )
    assert dead["reason"] == "permanent_http_4xx"
    # The attempt log is written in batches: it may land just after the dead letter.
    attempt = await wait_for(
        lambda: pg.fetchrow(
            "SELECT * FROM delivery_attempts WHERE conversion_id = $1", event.conversion_id
        ),
        message="attempt logged",
    )
    delivery = await wait_for(
        lambda: pg.fetchrow(
            "SELECT * FROM deliveries WHERE conversion_id = $1 AND status = 'dead'",
            event.conversion_id,
        ),
        message="delivery marked dead",
    )
    assert "Authorization: Basic ****" in attempt["response_excerpt"]
    stored = [
        attempt["url_masked"],
        attempt["error_message"] or "",
        attempt["response_excerpt"],
        delivery["last_error"] or "",
        dead["url_masked"],
        dead["last_error"] or "",
        str(dead["history"]),
    ]
    assert leaks("\n".join(stored), SECRETS) == []

    shown = [
        await api.get(f"/api/v1/dead-letters/{dead['id']}", headers=admin_headers),
        await api.get(
            "/api/v1/dead-letters", params={"publisher_id": publisher.id}, headers=admin_headers
        ),
        await api.get("/api/v1/me/postbacks", headers={"X-Api-Key": publisher.api_key}),
    ]
    for answer in shown:
        assert answer.status_code == 200, answer.text
        assert leaks(answer.text, SECRETS) == []


async def test_a_template_password_is_shown_masked_and_kept_when_saved_back(
    api: httpx.AsyncClient, db: Db, echoing: Receiver
) -> None:
    template = template_for(echoing)
    publisher = await create_publisher(db, url_template=template, security_token=TOKEN)
    headers = {"X-Api-Key": publisher.api_key}

    shown = await api.get("/api/v1/me/postback", headers=headers)
    masked = shown.json()["url_template"]
    assert masked == template.replace(PASSWORD_IN_URL, "****")
    assert leaks(shown.text, SECRETS) == []

    # The form's round trip: saving what was shown keeps the real password...
    saved = await api.put(
        "/api/v1/me/postback", json={"url_template": masked + "&v=2"}, headers=headers
    )
    assert saved.status_code == 200, saved.text
    assert leaks(saved.text, SECRETS) == []
    async with db() as session:
        row = await session.get(PostbackSettings, publisher.id)
    assert row is not None and row.url_template == template + "&v=2"
    # ...and the postback still authenticates with it.
    echoing.responder = echo(200)
    await api.post("/api/v1/me/postback/test", headers=headers)
    [received] = echoing.matching("/pb")
    assert received.headers["Authorization"] == f"Basic {basic_auth_form(USER, PASSWORD)}"


async def test_an_excerpt_cut_inside_the_token_shows_none_of_it(
    dispatcher: DispatcherHandle, pg: asyncpg.Pool, db: Db, echoing: Receiver
) -> None:
    from postback_dispatcher.sender import EXCERPT_BYTES

    kept = 12  # the excerpt ends with the first 12 characters of the token
    body = "x" * (EXCERPT_BYTES - kept) + TOKEN + " and more"
    echoing.responder = lambda request: web.Response(text=body)
    publisher = await create_publisher(
        db, url_template=f"{echoing.base_url}/pb?c={{click_id}}", security_token=TOKEN
    )
    event = make_event(publisher.id)
    await dispatcher.publish(event)

    attempt = await wait_for(
        lambda: pg.fetchrow(
            "SELECT * FROM delivery_attempts WHERE conversion_id = $1", event.conversion_id
        ),
        message="attempt logged",
    )
    excerpt = attempt["response_excerpt"]
    assert excerpt == "x" * (EXCERPT_BYTES - kept) + "****"
    assert TOKEN[:3] not in excerpt
