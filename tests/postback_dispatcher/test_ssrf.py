"""The SSRF guard, switched on, against the real senders and real loopback servers.

Every test runs with the dispatcher's lean client and with the aiohttp reference.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from aiohttp import web

from postback_dispatcher.sender import AiohttpPostbackSender, Http1PostbackSender
from postback_dispatcher.ssrf import TargetGuard, system_resolve
from tests.support.servers import Receiver

HEADERS = {"X-Postback-Id": "t"}
SENDERS = [Http1PostbackSender, AiohttpPostbackSender]


@pytest.fixture(params=SENDERS, ids=["http1", "aiohttp"])
def sender_class(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/pb",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[fe80::1]/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://localhost/",
    ],
)
async def test_non_global_targets_are_refused(url: str, sender_class: Any) -> None:
    sender = sender_class(timeout_seconds=2, guard=TargetGuard(enabled=True))
    try:
        result = await sender.send(url, HEADERS)
    finally:
        await sender.close()
    assert result.error_class == "SSRFBlocked", result
    assert result.status is None


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "http:///nohost"])
async def test_only_http_urls_with_a_host(url: str, sender_class: Any) -> None:
    sender = sender_class(timeout_seconds=2, guard=TargetGuard(enabled=True))
    try:
        result = await sender.send(url, HEADERS)
    finally:
        await sender.close()
    assert result.error_class == "InvalidURL", result


async def test_hostname_with_any_private_address_is_refused(sender_class: Any) -> None:
    async def resolve(host: str, port: int) -> list[tuple[str, int]]:
        return [("93.184.216.34", socket.AF_INET), ("10.0.0.5", socket.AF_INET)]

    sender = sender_class(timeout_seconds=2, guard=TargetGuard(resolve=resolve))
    try:
        result = await sender.send("http://rebind.example/pb", HEADERS)
    finally:
        await sender.close()
    assert result.error_class == "SSRFBlocked"


async def test_connects_to_the_vetted_address_and_rechecks_redirects(
    receiver: Receiver, sender_class: Any
) -> None:
    """A "public" host (resolved by an injected resolver, allow-listed on one port) is
    reached at the address vetted; its redirect to a loopback address is refused."""
    port = int(receiver.base_url.rsplit(":", 1)[1])
    resolved: list[str] = []

    async def resolve(host: str, port_: int) -> list[tuple[str, int]]:
        resolved.append(host)
        if host == "partner.example":
            return [("127.0.0.1", socket.AF_INET)]
        return await system_resolve(host, port_)

    guard = TargetGuard(resolve=resolve, allowed_targets=[("127.0.0.1", port)])
    sender = sender_class(timeout_seconds=2, guard=guard)

    def responder(request):
        if request.path == "/hop-private":
            raise web.HTTPFound(f"http://127.0.0.1:{port + 1}/internal")
        if request.path == "/hop-localhost":
            raise web.HTTPFound(f"http://localhost:{port + 1}/internal")
        if request.path == "/hop-ok":
            raise web.HTTPFound("/final")
        return web.Response(text="fine")

    receiver.responder = responder
    try:
        ok = await sender.send(f"http://partner.example:{port}/hop-ok?x=1", HEADERS)
        assert ok.status == 200 and ok.final_url.endswith("/final")
        assert [r.path for r in receiver.requests] == ["/hop-ok", "/final"]
        assert receiver.requests[0].headers["Host"] == f"partner.example:{port}"
        assert "partner.example" in resolved

        blocked = await sender.send(f"http://partner.example:{port}/hop-private", HEADERS)
        assert blocked.error_class == "SSRFBlocked"
        assert blocked.final_url == f"http://127.0.0.1:{port + 1}/internal"

        via_name = await sender.send(f"http://partner.example:{port}/hop-localhost", HEADERS)
        assert via_name.error_class == "SSRFBlocked"
        assert all(r.path != "/internal" for r in receiver.requests)
    finally:
        await sender.close()


async def test_redirects_are_limited_to_three(receiver: Receiver, sender_class: Any) -> None:
    receiver.responder = lambda request: web.Response(status=302, headers={"Location": "/again"})
    sender = sender_class(timeout_seconds=2, guard=TargetGuard(enabled=False))
    try:
        result = await sender.send(receiver.base_url + "/start", HEADERS)
    finally:
        await sender.close()
    assert result.error_class == "TooManyRedirects"
    assert len(receiver.requests) == 4


async def test_guard_off_allows_loopback(receiver: Receiver, sender_class: Any) -> None:
    sender = sender_class(timeout_seconds=2, guard=TargetGuard(enabled=False))
    try:
        result = await sender.send(receiver.base_url + "/pb", HEADERS)
    finally:
        await sender.close()
    assert result.status == 200 and result.response_excerpt == "ok"
