"""Visitor classification: client address behind proxies, country, OS, device, bots."""

from __future__ import annotations

import ipaddress

import pytest

from click_gateway.clicks.service import parse_click_query
from click_gateway.clicks.visitor import (
    ClientAddressResolver,
    classify_user_agent,
    country_of,
)
from tests.click_gateway.clicks_support import (
    ANDROID_PHONE_UA,
    BOT_UA,
    DESKTOP_UA,
    IPAD_UA,
    IPHONE_UA,
)

ANDROID_TABLET_UA = (
    "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
KINDLE_UA = (
    "Mozilla/5.0 (Linux; U; Android 4.0.3; en-us; KFTT Build/IML74K) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Silk/3.68 like Chrome/39.0.2171.93 Safari/537.36"
)
MAC_UA = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)


@pytest.mark.parametrize(
    ("user_agent", "os_family", "device", "is_bot"),
    [
        (DESKTOP_UA, "Windows", "desktop", False),
        (MAC_UA, "Mac OS X", "desktop", False),
        (ANDROID_PHONE_UA, "Android", "mobile", False),
        (IPHONE_UA, "iOS", "mobile", False),
        (IPAD_UA, "iOS", "tablet", False),
        (ANDROID_TABLET_UA, "Android", "tablet", False),
        (KINDLE_UA, "Android", "tablet", False),
        (BOT_UA, None, "other", True),
        ("curl/8.5.0", None, "other", True),
        ("", None, "other", True),
    ],
)
def test_user_agents_are_classified(
    user_agent: str, os_family: str | None, device: str, is_bot: bool
) -> None:
    info = classify_user_agent(user_agent)
    assert (info.os, info.device, info.is_bot) == (os_family, device, is_bot)


def test_countries_come_from_the_shipped_registry_data() -> None:
    assert country_of("81.2.69.160") == "GB"
    assert country_of("8.8.8.8") == "US"
    assert country_of("2001:4860:4860::8888") == "US"
    assert country_of("127.0.0.1") is None
    assert country_of("10.1.2.3") is None


def test_forwarded_for_is_trusted_only_from_trusted_proxies() -> None:
    resolver = ClientAddressResolver(
        [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32")]
    )
    # Untrusted peer: the header is ignored, whatever it says.
    assert resolver.resolve("203.0.113.9", "8.8.8.8") == "203.0.113.9"
    # Trusted peer: right to left, past our proxies, first untrusted hop.
    assert resolver.resolve("10.0.0.5", "1.1.1.1, 8.8.8.8, 10.0.0.7") == "8.8.8.8"
    assert resolver.resolve("127.0.0.1", "8.8.8.8") == "8.8.8.8"
    # Garbage stops the walk: the last hop we could trust wins.
    assert resolver.resolve("10.0.0.5", "8.8.8.8, not-an-ip, 10.0.0.7") == "10.0.0.7"
    # Only proxies in the chain: the left-most one.
    assert resolver.resolve("10.0.0.5", "10.0.0.9, 10.0.0.7") == "10.0.0.9"
    assert resolver.resolve("10.0.0.5", None) == "10.0.0.5"
    assert resolver.resolve("::ffff:8.8.4.4", None) == "8.8.4.4"
    assert ClientAddressResolver([]).resolve("127.0.0.1", "8.8.8.8") == "127.0.0.1"


def test_query_parsing_caps_cleans_and_prefers_aliases_in_order() -> None:
    external_id, subs = parse_click_query(
        b"external_id=4&click_id=3&clickid=&cid=%00&sub2=a%00b&sub1=x+y&sub1=second"
    )
    assert external_id == "3"
    assert subs == ["x y", "ab", None, None, None]
    assert parse_click_query(b"")[0] is None
    assert parse_click_query(b"cid=" + b"z" * 300)[0] == "z" * 256


def test_query_parsing_decodes_escaped_names_and_skips_blank_aliases() -> None:
    # Escaped parameter names are ours too; unknown and valueless ones are ignored.
    external_id, subs = parse_click_query(b"c%69d=abc&sub%33=x%2By&utm=1&sub1&clickid=zz")
    assert external_id == "abc"
    assert subs == [None, None, "x+y", None, None]
    # A blank preferred alias does not hide a later one; the first value of a name wins.
    assert parse_click_query(b"cid=+&click_id=two&click_id=three")[0] == "two"
    assert parse_click_query(b"external_id=e&cid=%20c%20")[0] == "c"
    # A whitespace-only sub is no value: a later one of the same name fills the slot.
    assert parse_click_query(b"sub2=%20&sub2=b")[1] == [None, "b", None, None, None]
