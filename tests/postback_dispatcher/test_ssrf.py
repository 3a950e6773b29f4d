"""The SSRF guard, switched on, against the dispatcher's sender and real loopback servers."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from aiohttp import web

from postback_dispatcher.sender import Http1PostbackSender
from postback_dispatcher.ssrf import TargetGuard, forbidden_reason, system_resolve
from tests.support.servers import Receiver

HEADERS = {"X-Postback-Id": "t"}


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
        "http://192.0.0.8/",
        "http://[64:ff9b::a00:1]/",
    ],
)
async def test_non_global_targets_are_refused(url: str) -> None:
    sender = Http1PostbackSender(timeout_seconds=2, guard=TargetGuard(enabled=True))
    try:
        result = await sender.send(url, HEADERS)
    finally:
        await sender.close()
    assert result.error_class == "SSRFBlocked", result
    assert result.status is None


# One or two addresses inside every special-purpose range (edges included) ...
BLOCKED_ADDRESSES = [
    "0.0.0.0", "0.255.255.255", "10.0.0.1", "10.255.255.255", "100.64.0.0", "100.127.255.255",
    "127.0.0.1", "127.255.255.254", "169.254.169.254", "172.16.0.1", "172.31.255.255",
    "192.0.0.0", "192.0.0.8", "192.0.0.11", "192.0.0.170", "192.0.0.255", "192.0.2.1",
    "192.31.196.1", "192.52.193.1", "192.88.99.1", "192.168.0.1", "192.175.48.1", "198.18.0.1",
    "198.19.255.255", "198.51.100.7", "203.0.113.9", "224.0.0.1", "239.255.255.250",
    "240.0.0.1", "255.255.255.254", "255.255.255.255",
    "::", "::1", "::ffff:127.0.0.1", "::ffff:8.8.8.8", "::127.0.0.1", "64:ff9b::a00:1",
    "64:ff9b:1::1", "100::1", "2001::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001:2::1",
    "2001:10::1", "2001:1ff:ffff::1", "2001:db8::1", "2002:a00:1::1", "2620:4f:8000::1",
    "3fff::1", "5f00::1", "fc00::1", "fd12:3456::1", "fe80::1", "febf::1", "fec0::1",
    "ff02::1", "4000::1", "1000::1",
]  # fmt: skip
# ... and globally reachable neighbours and anycast services that must stay allowed.
ALLOWED_ADDRESSES = [
    "1.1.1.1", "8.8.8.8", "9.255.255.255", "11.0.0.0", "93.184.216.34", "100.63.255.255",
    "100.128.0.0", "172.15.255.255", "172.32.0.0", "192.0.0.9", "192.0.0.10", "192.0.1.0",
    "192.0.3.0", "192.167.255.255", "192.169.0.0", "198.17.255.255", "198.20.0.0",
    "223.255.255.255",
    "2606:4700:4700::1111", "2001:4860:4860::8888", "2001:1::1", "2001:1::2", "2001:200::1",
    "2003::1", "2620:4f:8001::1", "2a00:1450:4001::200e", "2400:cb00::1",
]  # fmt: skip


@pytest.mark.parametrize("address", BLOCKED_ADDRESSES)
def test_special_purpose_addresses_are_blocked(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ALLOWED_ADDRESSES)
def test_globally_reachable_addresses_are_allowed(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is None


async def test_resolved_hosts_are_remembered_within_a_bound() -> None:
    """A template that puts a new host name in every postback can't grow the cache for ever."""
    lookups: list[str] = []

    async def resolve(host: str, port: int) -> list[tuple[str, int]]:
        lookups.append(host)
        return [("93.184.216.34", socket.AF_INET)]

    guard = TargetGuard(resolve=resolve, cache_hosts=8)
    for n in range(100):
        await guard.addresses(f"h{n}.example", 80)
    await guard.addresses("h99.example", 80)  # recent: remembered
    assert lookups.count("h99.example") == 1
    await guard.addresses("h0.example", 80)  # long ago: forgotten, looked up again
    assert lookups.count("h0.example") == 2
    assert len(lookups) == 101


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "http:///nohost",
        "http://127.0.0.1:0/x",
        "http://partner\x00.example/pb",
        "http://part ner.example/pb",
        "http://partner%2eexample/pb",
    ],
)
async def test_only_http_urls_with_a_host(url: str) -> None:
    sender = Http1PostbackSender(timeout_seconds=2, guard=TargetGuard(enabled=True))
    try:
        result = await sender.send(url, HEADERS)
    finally:
        await sender.close()
    assert result.error_class == "InvalidURL", result


async def test_hostname_with_any_private_address_is_refused() -> None:
    async def resolve(host: str, port: int) -> list[tuple[str, int]]:
        return [("93.184.216.34", socket.AF_INET), ("10.0.0.5", socket.AF_INET)]

    sender = Http1PostbackSender(timeout_seconds=2, guard=TargetGuard(resolve=resolve))
    try:
        result = await sender.send("http://rebind.example/pb", HEADERS)
    finally:
        await sender.close()
    assert result.error_class == "SSRFBlocked"


async def test_connects_to_the_vetted_address_and_rechecks_redirects(receiver: Receiver) -> None:
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
    sender = Http1PostbackSender(timeout_seconds=2, guard=guard)

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


async def test_redirects_are_limited_to_three(receiver: Receiver) -> None:
    receiver.responder = lambda request: web.Response(status=302, headers={"Location": "/again"})
    sender = Http1PostbackSender(timeout_seconds=2, guard=TargetGuard(enabled=False))
    try:
        result = await sender.send(receiver.base_url + "/start", HEADERS)
    finally:
        await sender.close()
    assert result.error_class == "TooManyRedirects"
    assert len(receiver.requests) == 4


async def test_guard_off_allows_loopback(receiver: Receiver) -> None:
    sender = Http1PostbackSender(timeout_seconds=2, guard=TargetGuard(enabled=False))
    try:
        result = await sender.send(receiver.base_url + "/pb", HEADERS)
    finally:
        await sender.close()
    assert result.status == 200 and result.response_excerpt == "ok"
