"""Request limits both services enforce: body cap, authentication first, failed-auth limits."""

from __future__ import annotations

import asyncio
import itertools

import httpx
import pytest

from tests.api_hardening.conftest import (
    ADMIN,
    AUTH_FAILURE_LIMIT,
    BODY_CAP,
    Services,
    as_client,
)
from tests.api_hardening.raw_http import connect, read_response, request_head

_addresses = (f"198.51.100.{n}" for n in itertools.count(1))


def fresh_address() -> str:
    """A client address no other test has used (failed-auth counts are per address)."""
    return next(_addresses)


def base(services: Services, service: str) -> str:
    return services.gateway if service == "gateway" else services.dispatcher


# (service, method, path, valid credentials)
def body_endpoints(services: Services) -> list[tuple[str, str, str, dict[str, str]]]:
    return [
        ("gateway", "POST", "/api/v1/publishers", ADMIN),
        ("gateway", "POST", "/api/v1/conversions", {"X-Api-Key": services.advertiser_key}),
        ("dispatcher", "PUT", "/api/v1/me/postback", {"X-Api-Key": services.publisher_key}),
        ("dispatcher", "POST", "/api/v1/dead-letters/replay", ADMIN),
    ]


ENDPOINT_IDS = ["admin", "conversions-fast-path", "publisher-api", "dead-letter-api"]


@pytest.mark.parametrize("index", range(4), ids=ENDPOINT_IDS)
async def test_a_declared_oversized_body_is_refused_with_413_before_it_is_sent(
    services: Services, index: int
) -> None:
    service, method, path, credentials = body_endpoints(services)[index]
    reader, writer = await connect(base(services, service))
    headers = as_client(
        fresh_address(),
        **credentials,
        **{"Content-Type": "application/json", "Content-Length": str(50 * 1024 * 1024)},
    )
    writer.write(request_head(method, path, headers))  # and not one byte of the 50 MB
    await writer.drain()
    response = await read_response(reader)
    writer.close()
    assert response.status == 413
    assert response.headers["content-type"] == "application/json"
    assert f"at most {BODY_CAP} bytes" in response.json()["detail"]  # type: ignore[index]


@pytest.mark.parametrize("index", range(4), ids=ENDPOINT_IDS)
async def test_a_streamed_body_is_cut_off_at_the_cap(services: Services, index: int) -> None:
    """No Content-Length (chunked): refused once the cap is passed, not after 50 MB."""
    service, method, path, credentials = body_endpoints(services)[index]
    sent = 0
    chunk = b"[" + b"1," * 8191 + b"1]"  # ~16 KiB of valid JSON-ish bytes per chunk

    async def body() -> object:
        nonlocal sent
        while sent < 50 * 1024 * 1024:
            sent += len(chunk)
            yield chunk

    async with httpx.AsyncClient(base_url=base(services, service), timeout=30) as client:
        try:
            response = await client.request(
                method,
                path,
                content=body(),
                headers=as_client(
                    fresh_address(), **credentials, **{"Content-Type": "application/json"}
                ),
            )
        except httpx.TransportError:  # the server hung up mid-upload: also a refusal, check size
            response = None
    assert sent < 4 * 1024 * 1024, f"the server kept reading: {sent} bytes"
    if response is not None:
        assert response.status_code == 413
        assert "too large" in response.json()["detail"]


@pytest.mark.parametrize("index", range(4), ids=ENDPOINT_IDS)
async def test_bad_credentials_are_refused_before_the_body_is_read(
    services: Services, index: int
) -> None:
    """The 401 comes back while the client is still holding the (announced) body."""
    service, method, path, _ = body_endpoints(services)[index]
    bad = {"Authorization": "Bearer not-the-admin-token-0000000000", "X-Api-Key": "nope"}
    reader, writer = await connect(base(services, service))
    headers = as_client(
        fresh_address(), **bad, **{"Content-Type": "application/json", "Content-Length": "4000"}
    )
    writer.write(request_head(method, path, headers))
    await writer.drain()
    response = await read_response(reader, timeout=10)  # before the fix: waits for the body
    writer.close()
    assert response.status == 401
    assert response.headers["content-type"] == "application/json"
    assert "required" in response.json()["detail"]  # type: ignore[index]


@pytest.mark.parametrize("service", ["gateway", "dispatcher"])
async def test_repeated_failed_authentication_gets_429_with_retry_after(
    services: Services, service: str
) -> None:
    attacker, bystander = fresh_address(), fresh_address()
    path = "/api/v1/publishers" if service == "gateway" else "/api/v1/dead-letters"
    async with httpx.AsyncClient(base_url=base(services, service), timeout=30) as client:
        wrong = {"Authorization": "Bearer guess-0123456789abcdef0123456789"}
        statuses = []
        for _ in range(4):  # 200 guesses, 50 at a time
            responses = await asyncio.gather(
                *(client.get(path, headers=as_client(attacker, **wrong)) for _ in range(50))
            )
            statuses += [r.status_code for r in responses]
        assert set(statuses) == {401, 429}
        assert statuses.count(401) <= AUTH_FAILURE_LIMIT
        refused = await client.get(path, headers=as_client(attacker, **wrong))
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert "too many failed authentication attempts" in refused.json()["detail"]
        # Even the right token waits out the lock-out (else guessing would go on)...
        locked = await client.get(path, headers=as_client(attacker, **ADMIN))
        assert locked.status_code == 429
        # ...while other clients are not affected.
        other = await client.get(path, headers=as_client(bystander, **ADMIN))
        assert other.status_code == 200


async def test_bad_advertiser_keys_on_the_s2s_url_count_too(services: Services) -> None:
    attacker = fresh_address()
    async with httpx.AsyncClient(base_url=services.gateway, timeout=30) as client:
        statuses = [
            (
                await client.get(
                    "/api/v1/conversions/s2s",
                    params={"click_id": "1", "key": f"guess-{n}"},
                    headers=as_client(attacker),
                )
            ).status_code
            for n in range(AUTH_FAILURE_LIMIT + 2)
        ]
    assert statuses[:AUTH_FAILURE_LIMIT] == [401] * AUTH_FAILURE_LIMIT
    assert statuses[AUTH_FAILURE_LIMIT:] == [429, 429]


async def test_clicks_are_never_rate_limited_or_guarded(services: Services) -> None:
    """The redirect path has no credentials: it stays out of the guard entirely."""
    async with httpx.AsyncClient(base_url=services.gateway, timeout=30) as client:
        statuses = {
            (await client.get("/get/no-such-code", headers=as_client("198.51.100.250"))).status_code
            for _ in range(AUTH_FAILURE_LIMIT + 5)
        }
    assert statuses == {404}


async def test_an_allowed_body_still_works_end_to_end(services: Services) -> None:
    async with httpx.AsyncClient(base_url=services.gateway, timeout=30) as client:
        name = "x" * 150
        response = await client.post(
            "/api/v1/publishers", json={"name": name}, headers=as_client(fresh_address(), **ADMIN)
        )
    assert response.status_code == 201
    assert response.json()["name"] == name
