"""The publisher API (X-Api-Key) against a real dispatcher, database and receiver."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from postback_core.db.base import unit_of_work
from postback_core.db.models import DeliveryAttempt, PostbackSettings
from postback_dispatcher.signing import verify_signature
from tests.postback_dispatcher.portal_fixtures import PublisherAccount, create_publisher
from tests.support.servers import Receiver

Db = async_sessionmaker[AsyncSession]


def key(publisher: PublisherAccount) -> dict[str, str]:
    return {"X-Api-Key": publisher.api_key}


async def _saved(db: Db, publisher_id: int) -> PostbackSettings | None:
    async with db() as session:
        return await session.get(PostbackSettings, publisher_id)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/me/postback"),
        ("PUT", "/api/v1/me/postback"),
        ("POST", "/api/v1/me/postback/preview"),
        ("POST", "/api/v1/me/postback/test"),
        ("GET", "/api/v1/me/postbacks"),
    ],
)
async def test_every_endpoint_requires_a_valid_api_key(
    api: httpx.AsyncClient, method: str, path: str, admin_headers: dict[str, str]
) -> None:
    body = {"url_template": "https://x.example/?c={click_id}"}
    for headers in ({}, {"X-Api-Key": "pub_not-a-real-key"}, admin_headers):
        response = await api.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert "X-Api-Key" in response.json()["detail"]


async def test_an_inactive_publisher_is_refused(api: httpx.AsyncClient, db: Db) -> None:
    from postback_core.db.models import Publisher

    publisher = await create_publisher(db)
    async with unit_of_work(db) as session:
        (await session.get(Publisher, publisher.id)).is_active = False  # type: ignore[union-attr]
    response = await api.get("/api/v1/me/postback", headers=key(publisher))
    assert response.status_code == 401


async def test_settings_round_trip_with_masked_token(api: httpx.AsyncClient, db: Db) -> None:
    publisher = await create_publisher(db)
    empty = await api.get("/api/v1/me/postback", headers=key(publisher))
    assert empty.status_code == 200
    assert empty.json()["configured"] is False

    template = "https://yourdomain.com/postback?click_id={external_id}&token={security_token}"
    saved = await api.put(
        "/api/v1/me/postback",
        json={"url_template": template, "security_token": "tok_supersecret_987"},
        headers=key(publisher),
    )

    assert saved.status_code == 200, saved.text
    body = saved.json()
    assert body["configured"] is True
    assert body["url_template"] == template
    assert body["security_token"] == "****_987"
    assert "supersecret" not in saved.text
    assert (
        body["example_url"] == "https://yourdomain.com/postback?click_id=abc123xyz&token=****_987"
    )
    again = await api.get("/api/v1/me/postback", headers=key(publisher))
    assert again.json()["security_token"] == "****_987"
    assert "supersecret" not in again.text
    row = await _saved(db, publisher.id)
    assert row is not None and row.security_token == "tok_supersecret_987"

    # Omitting the token keeps it; an explicit null removes it.
    kept = await api.put(
        "/api/v1/me/postback",
        json={"url_template": template.replace("postback", "pb")},
        headers=key(publisher),
    )
    assert kept.json()["has_security_token"] is True
    cleared = await api.put(
        "/api/v1/me/postback",
        json={"url_template": template, "security_token": None},
        headers=key(publisher),
    )
    assert cleared.json()["has_security_token"] is False
    assert any("security_token" in w for w in cleared.json()["warnings"])


async def test_unknown_macro_is_refused_by_name_and_nothing_is_saved(
    api: httpx.AsyncClient, db: Db
) -> None:
    publisher = await create_publisher(db)
    response = await api.put(
        "/api/v1/me/postback",
        json={"url_template": "https://t.example/pb?cid={external_id}&p={payot}"},
        headers=key(publisher),
    )
    assert response.status_code == 422
    assert response.json()["unknown_macros"] == ["payot"]
    assert "{payot}" in response.json()["detail"]
    assert await _saved(db, publisher.id) is None

    not_a_url = await api.put(
        "/api/v1/me/postback",
        json={"url_template": "ftp://nope/{click_id}"},
        headers=key(publisher),
    )
    assert not_a_url.status_code == 422
    assert "http" in not_a_url.json()["detail"]


async def test_preview_renders_example_values_or_names_the_typo(
    api: httpx.AsyncClient, db: Db
) -> None:
    publisher = await create_publisher(db)
    good = await api.post(
        "/api/v1/me/postback/preview",
        json={
            "url_template": "https://t.example/pb?cid={external_id}&p={payout}&pub={publisher_id}"
        },
        headers=key(publisher),
    )
    assert good.json() == {
        "valid": True,
        "url": f"https://t.example/pb?cid=abc123xyz&p=0.50&pub={publisher.id}",
        "error": None,
        "unknown_macros": [],
        "warnings": [],
    }
    bad = await api.post(
        "/api/v1/me/postback/preview",
        json={"url_template": "https://t.example/pb?cid={external_id}&p={payot}"},
        headers=key(publisher),
    )
    assert bad.json()["valid"] is False
    assert bad.json()["unknown_macros"] == ["payot"]


async def test_test_postback_reaches_the_receiver_marked_signed_and_logged(
    api: httpx.AsyncClient, db: Db, receiver: Receiver
) -> None:
    publisher = await create_publisher(db)
    token = "tok_for_test_555"
    template = (
        f"{receiver.base_url}/pb?cid={{external_id}}&pay={{payout}}&pub={{publisher_id}}"
        "&t={security_token}"
    )
    await api.put(
        "/api/v1/me/postback",
        json={"url_template": template, "security_token": token},
        headers=key(publisher),
    )

    response = await api.post("/api/v1/me/postback/test", headers=key(publisher))

    assert response.status_code == 200, response.text
    result = response.json()
    assert result["ok"] is True
    assert result["status"] == 200
    assert result["latency_ms"] > 0
    assert result["response_excerpt"] == "ok"
    assert token not in response.text
    assert result["url"].endswith("&t=****_555")
    [received] = receiver.matching("/pb")
    assert received.query == {
        "cid": "abc123xyz",
        "pay": "0.50",
        "pub": str(publisher.id),
        "t": token,
    }
    assert received.headers["X-Postback-Test"] == "1"
    assert verify_signature(
        token,
        f"{receiver.base_url}{received.raw_url}",
        received.headers.get("X-Postback-Timestamp"),
        received.headers.get("X-Postback-Signature"),
    )
    async with db() as session:
        attempt = await session.get(DeliveryAttempt, result["attempt_id"])
    assert attempt is not None
    assert (attempt.trigger, attempt.conversion_id, attempt.publisher_id) == (
        "test",
        None,
        publisher.id,
    )
    assert attempt.http_status == 200
    assert token not in (attempt.url_masked or "")

    log = await api.get("/api/v1/me/postbacks", params={"trigger": "test"}, headers=key(publisher))
    assert [item["id"] for item in log.json()["items"]] == [result["attempt_id"]]


async def test_test_postback_with_a_supplied_template_and_a_failing_receiver(
    api: httpx.AsyncClient, db: Db, receiver: Receiver
) -> None:
    publisher = await create_publisher(db)
    receiver.responder = lambda request: 503
    response = await api.post(
        "/api/v1/me/postback/test",
        json={"url_template": f"{receiver.base_url}/down?c={{click_id}}"},
        headers=key(publisher),
    )
    assert response.status_code == 200
    assert response.json()["ok"] is False
    assert response.json()["status"] == 503
    assert response.json()["error_class"] == "HTTP503"
    assert receiver.matching("/down")[0].query == {"c": "12345"}

    no_template = await api.post("/api/v1/me/postback/test", headers=key(publisher))
    assert no_template.status_code == 409
    typo = await api.post(
        "/api/v1/me/postback/test",
        json={"url_template": f"{receiver.base_url}/x?c={{clickid}}"},
        headers=key(publisher),
    )
    assert typo.status_code == 422
    assert typo.json()["unknown_macros"] == ["clickid"]


async def test_test_postbacks_obey_the_ssrf_guard(db: Db) -> None:
    """With the guard on (production default) a test can't reach private addresses."""
    from postback_dispatcher.publisher_api import schemas, service
    from postback_dispatcher.sender import Http1PostbackSender
    from postback_dispatcher.ssrf import TargetGuard

    publisher = await create_publisher(db)
    sender = Http1PostbackSender(timeout_seconds=2, guard=TargetGuard(enabled=True))
    try:
        async with unit_of_work(db) as session:
            result = await service.send_test(
                session,
                sender,
                publisher.id,
                schemas.TestPostbackRequest(
                    url_template="http://169.254.169.254/latest?c={click_id}"
                ),
            )
    finally:
        await sender.close()
    assert result.ok is False
    assert result.status is None
    assert result.error_class == "SSRFBlocked"


async def test_recent_postbacks_are_paginated_filtered_and_private(
    api: httpx.AsyncClient, db: Db
) -> None:
    mine = await create_publisher(db)
    theirs = await create_publisher(db)
    async with unit_of_work(db) as session:
        for n in range(5):
            for owner in (mine, theirs):
                session.add(
                    DeliveryAttempt(
                        conversion_id=1000 + n,
                        publisher_id=owner.id,
                        attempt_no=1,
                        trigger="first",
                        outcome="delivered" if n % 2 == 0 else "retry",
                        url_masked=f"https://t.example/{owner.name}",
                        http_status=200 if n % 2 == 0 else 500,
                        duration_ms=Decimal("3.5"),
                    )
                )
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, object] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await api.get("/api/v1/me/postbacks", params=params, headers=key(mine))).json()
        assert all(theirs.name not in (item["url"] or "") for item in page["items"])
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 5
    assert seen == sorted(seen, reverse=True)
    failed = await api.get("/api/v1/me/postbacks", params={"status": 500}, headers=key(mine))
    assert [i["http_status"] for i in failed.json()["items"]] == [500, 500]
    delivered = await api.get(
        "/api/v1/me/postbacks", params={"outcome": "delivered"}, headers=key(mine)
    )
    assert len(delivered.json()["items"]) == 3
    assert delivered.json()["items"][0]["latency_ms"] == 3.5
    bad = await api.get("/api/v1/me/postbacks", params={"cursor": "zzz"}, headers=key(mine))
    assert bad.status_code == 422


async def test_a_publisher_never_sees_or_changes_another_publishers_data(
    api: httpx.AsyncClient, db: Db, receiver: Receiver
) -> None:
    alice = await create_publisher(
        db,
        url_template=f"{receiver.base_url}/alice?c={{click_id}}&t={{security_token}}",
        security_token="alice_secret_token",
    )
    bob = await create_publisher(db)

    bob_view = await api.get("/api/v1/me/postback", headers=key(bob))
    assert bob_view.json()["publisher_id"] == bob.id
    assert bob_view.json()["configured"] is False
    assert "alice" not in bob_view.text

    await api.put(
        "/api/v1/me/postback",
        json={"url_template": f"{receiver.base_url}/bob?c={{click_id}}"},
        headers=key(bob),
    )
    alice_row = await _saved(db, alice.id)
    assert alice_row is not None and "/alice" in alice_row.url_template

    # Bob's test uses Bob's template and never Alice's token.
    bob_test = await api.post(
        "/api/v1/me/postback/test",
        json={"url_template": f"{receiver.base_url}/bob?t={{security_token}}&p={{publisher_id}}"},
        headers=key(bob),
    )
    assert bob_test.json()["ok"] is True
    assert receiver.matching("/alice") == []
    assert receiver.matching("/bob")[0].query == {"t": "", "p": str(bob.id)}

    alice_test = await api.post("/api/v1/me/postback/test", headers=key(alice))
    assert alice_test.json()["ok"] is True
    alice_log = (await api.get("/api/v1/me/postbacks", headers=key(alice))).json()["items"]
    bob_log = (await api.get("/api/v1/me/postbacks", headers=key(bob))).json()["items"]
    assert {i["id"] for i in alice_log} == {alice_test.json()["attempt_id"]}
    assert {i["id"] for i in bob_log} == {bob_test.json()["attempt_id"]}
    # A cursor made from Alice's page does not reveal her rows to Bob either.
    from postback_dispatcher.pagination import encode_cursor

    peek = await api.get(
        "/api/v1/me/postbacks",
        params={"cursor": encode_cursor(alice_log[0]["id"] + 1)},
        headers=key(bob),
    )
    assert all(i["id"] != alice_log[0]["id"] for i in peek.json()["items"])
    # Preview renders the caller's own publisher id.
    preview = await api.post(
        "/api/v1/me/postback/preview",
        json={"url_template": "https://t.example/?p={publisher_id}&c={click_id}"},
        headers=key(bob),
    )
    assert preview.json()["url"] == f"https://t.example/?p={bob.id}&c=12345"


async def test_attempt_filters_accept_only_known_outcomes_and_triggers(
    api: httpx.AsyncClient, db: Db
) -> None:
    publisher = await create_publisher(db)
    for params in ({"outcome": "ok"}, {"trigger": "manual"}, {"outcome": "Delivered"}):
        response = await api.get("/api/v1/me/postbacks", params=params, headers=key(publisher))
        assert response.status_code == 422, (params, response.text)
    good = await api.get(
        "/api/v1/me/postbacks",
        params={"outcome": "delivered", "trigger": "test"},
        headers=key(publisher),
    )
    assert good.status_code == 200
