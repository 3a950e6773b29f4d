"""The dispatcher's hot-path shortcuts hold the same contract as the slow, general code."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from decimal import Decimal
from typing import Any

import orjson
import pytest

from postback_core.contracts import ContractError, decode_conversion_event
from postback_core.macros import MACRO_NAMES
from postback_dispatcher.breaker import HostLimiter
from postback_dispatcher.events import DispatchEvent, decode_event
from postback_dispatcher.rendering import compile_template, macro_values, render_postback_url
from postback_dispatcher.signing import compute_signature, postback_headers, signed_headers
from tests.postback_dispatcher.conftest import make_event

FIELDS = [name for name in DispatchEvent.__slots__]
CANONICAL: dict[str, Any] = {
    "schema_version": 1,
    "event_type": "conversion.created",
    "event_id": "0f8c3c52-8f64-4a55-9d1e-2f4b3a6c7d8e",
    "conversion_id": 11,
    "click_id": 7_000_000_000_123,
    "external_id": "ext-1",
    "publisher_id": 3,
    "smartlink_id": 5,
    "offer_id": 42,
    "advertiser_id": 2,
    "payout": "0.5000",
    "currency": "USD",
    "txid": None,
    "country": "US",
    "ip": "203.0.113.9",
    "os": "Android",
    "device": "mobile",
    "sub_ids": {"sub1": "a", "sub2": None},
    "occurred_at": "2026-11-27T08:00:00.123456+00:00",
}

VARIANTS: list[dict[str, Any]] = [
    {},
    {"event_id": "0F8C3C52-8F64-4A55-9D1E-2F4B3A6C7D8E"},
    {"event_id": "0f8c3c528f644a559d1e2f4b3a6c7d8e"},
    {"event_id": "not-a-uuid"},
    {"event_id": None},
    {"event_id": 5},
    {"conversion_id": "11"},
    {"conversion_id": 11.0},
    {"conversion_id": True},
    {"conversion_id": None},
    {"click_id": -1},
    {"publisher_id": 2**63 - 1},
    {"offer_id": None},
    {"offer_id": "42"},
    {"external_id": None},
    {"external_id": 123},
    {"external_id": "a b&c=d/é"},
    {"country": ""},
    {"payout": "0"},
    {"payout": "-0.5"},
    {"payout": "007.50"},
    {"payout": "1e3"},
    {"payout": "NaN"},
    {"payout": "abc"},
    {"payout": 0.5},
    {"payout": 1},
    {"payout": None},
    {"currency": None},
    {"currency": "EUR"},
    {"event_type": "conversion.updated"},
    {"event_type": None},
    {"sub_ids": None},
    {"sub_ids": {}},
    {"sub_ids": {"sub6": "x"}},
    {"sub_ids": {"sub1": 1}},
    {"sub_ids": []},
    {"occurred_at": "2026-11-27T08:00:00"},
    {"occurred_at": "2026-11-27T08:00:00Z"},
    {"occurred_at": "2026-11-27T08:00:00.1-05:30"},
    {"occurred_at": "2026-13-27T08:00:00Z"},
    {"occurred_at": "2026-11-27T24:00:00Z"},
    {"occurred_at": "2026-11-27T08:00:00+24:00"},
    {"occurred_at": "2026-11-27"},
    {"occurred_at": 1_700_000_000},
    {"occurred_at": None},
    {"unknown_field": {"nested": True}},
    # Ranges: what decodes but would fail in SQL is refused by both decoders alike.
    {"conversion_id": 0},
    {"conversion_id": -5},
    {"conversion_id": 2**63},
    {"conversion_id": 2**64 - 1},
    {"publisher_id": 2**63},
    {"click_id": 2**63 - 1},
    {"offer_id": 0},
    {"smartlink_id": 2**63},
    {"advertiser_id": -1},
    {"payout": "99999999.9999"},
    {"payout": "100000000"},
    {"payout": "100000000.0"},
    {"payout": "1.23456"},
    {"payout": "0.50000"},
    {"payout": "-0"},
    {"payout": "-0.01"},
    {"payout": "Infinity"},
    {"payout": "1e-5"},
    {"external_id": "a\x00b"},
    {"external_id": "x" * 1024},
    {"external_id": "x" * 1025},
    {"txid": "\x00"},
    {"currency": "\x00"},
    {"sub_ids": {"sub1": "a\x00"}},
    {"sub_ids": {"sub3": "y" * 1025}},
]


def _outcome(decode: Any, body: bytes) -> Any:
    try:
        event = decode(body)
    except ContractError as exc:
        return ("error", exc.reason)
    values = {name: getattr(event, name) for name in FIELDS}
    if b'"event_id"' not in body:  # a fresh uuid4 on either side
        assert isinstance(values.pop("event_id"), uuid.UUID)
    return ("ok", values)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: orjson.dumps(v).decode()[:60])
def test_fast_decoder_agrees_with_the_contract(variant: dict[str, Any]) -> None:
    for raw in ({**CANONICAL, **variant}, {k: v for k, v in CANONICAL.items() if k not in variant}):
        body = orjson.dumps(raw)
        assert _outcome(decode_event, body) == _outcome(decode_conversion_event, body)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b"null",
        orjson.dumps({"schema_version": 99, "conversion_id": 1}),
        orjson.dumps({"schema_version": "1"}),
        orjson.dumps(
            {
                "schema_version": True,
                **{k: v for k, v in CANONICAL.items() if k != "schema_version"},
            }
        ),
        orjson.dumps({"schema_version": 1, "event_type": "conversion.created"}),
        orjson.dumps({"schema_version": "v" * 5000}),
        orjson.dumps({**CANONICAL, "padding": "x" * (64 * 1024)}),
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=lambda body: body[:40].decode("utf-8", "replace"),
)
def test_poison_gets_the_contract_reason(body: bytes) -> None:
    assert _outcome(decode_event, body) == _outcome(decode_conversion_event, body)


def test_fast_decoder_values_are_the_contract_types() -> None:
    event = decode_event(orjson.dumps(CANONICAL))
    assert isinstance(event.event_id, uuid.UUID)
    assert str(event.event_id) == CANONICAL["event_id"]
    assert event.event_id == uuid.UUID(CANONICAL["event_id"])
    assert hash(event.event_id) == hash(uuid.UUID(CANONICAL["event_id"]))
    assert event.payout == Decimal("0.5000") and isinstance(event.payout, Decimal)


ALL_MACROS = "&".join(f"{name}={{{name}}}" for name in sorted(MACRO_NAMES))
TEMPLATES = [
    f"https://t.example/pb?{ALL_MACROS}&x={{unknown}}",
    " https://t.example/conv/{external_id}/ok?s={security_token} ",
    "http://127.0.0.1:9/pb?c={click_id}&p={payout}&o={offer_id}",
    "https://{ip}/odd?c={country}",
]


def test_compiled_template_renders_exactly_like_the_reference() -> None:
    cases = itertools.product(
        ["a b&c=d/e?f#g%h+i", "abc", "", None, "Düsseldorf"],
        ["0.5", "0", "-0", "1.2300", "10", "1E+1"],
        [None, "", "s3 cr/et"],
        ["US", None, ""],
    )
    for external_id, payout, token, country in cases:
        event = make_event(
            7,
            external_id=external_id,
            payout=Decimal(payout),
            country=country,
            offer_id=None if payout == "0" else 42,
        )
        fast = decode_event(event.to_json())
        for template in TEMPLATES:
            expected = render_postback_url(template, macro_values(event, token))
            assert compile_template(template).render(event, token) == expected
            assert compile_template(template).render(fast, token) == expected


def test_compiled_template_knows_its_host() -> None:
    assert compile_template("http://User@Host.Example:81/x?c={click_id}").host == "host.example:81"
    assert compile_template("https://{ip}/x").host is None


def test_signed_headers_match_postback_headers() -> None:
    url = "https://t.example/pb?c=1"
    headers = signed_headers("id-1", "tok", url)
    assert headers == postback_headers("id-1", url, "tok", now=int(headers["X-Postback-Timestamp"]))
    assert headers["X-Postback-Signature"] == compute_signature(
        "tok", headers["X-Postback-Timestamp"], url
    )
    assert signed_headers("id-1", None, url) == postback_headers("id-1", url, None)


async def test_host_limiter_caps_each_host_and_survives_cancellation() -> None:
    limiter = HostLimiter(3)
    active: dict[str, int] = {"a": 0, "b": 0}
    peak: dict[str, int] = {"a": 0, "b": 0}

    async def job(host: str, seconds: float) -> None:
        async with limiter.slot(host):
            active[host] += 1
            peak[host] = max(peak[host], active[host])
            await asyncio.sleep(seconds)
            active[host] -= 1

    tasks = [asyncio.create_task(job("ab"[i % 2], 0.001 * (i % 5))) for i in range(200)]
    await asyncio.sleep(0.005)
    for task in tasks[40:90]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert peak == {"a": 3, "b": 3}
    assert active == {"a": 0, "b": 0}
    # Nothing left behind: idle hosts are forgotten.
    assert not limiter._active and not limiter._waiters
    # Still usable afterwards.
    await asyncio.wait_for(job("a", 0), 1)
