"""Macro rendering, encoding and the signature, as a receiver sees them."""

from __future__ import annotations

import time
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest

from postback_core.macros import MACRO_NAMES
from postback_dispatcher.rendering import format_payout, macro_values, render_postback_url
from postback_dispatcher.signing import (
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    postback_headers,
    verify_signature,
)
from tests.postback_dispatcher.conftest import make_event

ALL_MACROS = "&".join(f"{name}={{{name}}}" for name in sorted(MACRO_NAMES))


def test_every_macro_is_rendered() -> None:
    event = make_event(
        7,
        click_id=12345,
        external_id="abc123xyz",
        payout=Decimal("0.5"),
        country="US",
        ip="192.168.1.1",
        os="Windows",
        device="desktop",
        offer_id=42,
        smartlink_id=9,
    )
    url = render_postback_url(
        f"https://t.example/pb?{ALL_MACROS}", macro_values(event, "secret_token_123")
    )
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert query == {
        "click_id": "12345",
        "external_id": "abc123xyz",
        "publisher_id": "7",
        "payout": "0.50",
        "country": "US",
        "ip": "192.168.1.1",
        "os": "Windows",
        "device": "desktop",
        "offer_id": "42",
        "smartlink_id": "9",
        "security_token": "secret_token_123",
    }
    assert len(query) == 11


def test_external_id_with_reserved_characters_arrives_as_one_value() -> None:
    values = {"external_id": "a b&c=d/e?f#g%h+i"}
    url = render_postback_url("https://t.example/pb?cid={external_id}&x=1", values)
    assert url == "https://t.example/pb?cid=a%20b%26c%3Dd%2Fe%3Ff%23g%25h%2Bi&x=1"
    assert parse_qs(urlsplit(url).query) == {"cid": ["a b&c=d/e?f#g%h+i"], "x": ["1"]}


def test_path_segment_value_is_encoded_too() -> None:
    url = render_postback_url("https://t.example/conv/{external_id}/ok", {"external_id": "a/b c"})
    assert url == "https://t.example/conv/a%2Fb%20c/ok"


def test_unicode_value_is_utf8_percent_encoded() -> None:
    url = render_postback_url("https://t.example/?c={country}", {"country": "Düsseldorf"})
    assert url == "https://t.example/?c=D%C3%BCsseldorf"


@pytest.mark.parametrize(
    ("payout", "expected"),
    [("0.5", "0.50"), ("0.5000", "0.50"), ("2", "2.00"), ("1.2345", "1.2345"), ("100", "100.00")],
)
def test_payout_is_a_plain_decimal_with_two_places(payout: str, expected: str) -> None:
    assert format_payout(Decimal(payout)) == expected


def test_missing_values_render_empty_and_unknown_macros_stay() -> None:
    event = make_event(1, external_id=None, country=None, offer_id=None, smartlink_id=None)
    url = render_postback_url(
        "https://t.example/pb?e={external_id}&c={country}&o={offer_id}&t={security_token}"
        "&keep={payot}",
        macro_values(event, None),
    )
    assert url == "https://t.example/pb?e=&c=&o=&t=&keep={payot}"


def test_signature_verifies_with_the_token_and_fails_otherwise() -> None:
    url = "https://t.example/pb?cid=a%2Fb&p=0.50"
    headers = postback_headers("evt-1", url, "tok_abc")
    ts, sig = headers[HEADER_TIMESTAMP], headers[HEADER_SIGNATURE]
    assert sig.startswith("v1=")
    assert verify_signature("tok_abc", url, ts, sig)
    assert not verify_signature("other", url, ts, sig)
    assert not verify_signature("tok_abc", url.replace("%2F", "/"), ts, sig)
    assert not verify_signature("tok_abc", url, ts, sig, now=time.time() + 3600)
    assert HEADER_SIGNATURE not in postback_headers("evt-1", url, None)
