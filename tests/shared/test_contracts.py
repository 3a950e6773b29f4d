from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest

from postback_core.contracts import (
    ContractError,
    ConversionEvent,
    ConversionEventV2,
    decode_conversion_event,
)
from postback_core.enums import ConversionStatus


def make_event(**overrides: object) -> ConversionEvent:
    fields: dict[str, object] = {
        "conversion_id": 1,
        "click_id": 2**62 + 5,
        "external_id": "a b&c=d",
        "publisher_id": 7,
        "payout": Decimal("0.50"),
        "occurred_at": datetime(2026, 11, 27, tzinfo=UTC),
    }
    fields.update(overrides)
    return ConversionEvent.model_validate(fields)


def test_round_trip_keeps_money_exact_and_big_ids_intact() -> None:
    event = make_event(payout=Decimal("0.1") + Decimal("0.2"))
    raw = orjson.loads(event.to_json())
    assert raw["payout"] == "0.3"  # a string, never a float
    assert raw["schema_version"] == 1
    decoded = decode_conversion_event(event.to_json())
    assert decoded == event
    assert decoded.payout == Decimal("0.3")
    assert decoded.click_id == 2**62 + 5


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"schema_version": 99}', "unsupported schema_version: 99"),
        (b'{"schema_version": 1, "click_id": 5}', "conversion_id"),
    ],
)
def test_bad_messages_are_rejected_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(ContractError, match=reason):
        decode_conversion_event(body)


def make_v2(**overrides: object) -> ConversionEventV2:
    fields: dict[str, object] = {
        "event_type": "conversion.status_changed",
        "conversion_id": 9,
        "sequence": 3,
        "click_id": 2**62 + 9,
        "publisher_id": 7,
        "goal": "purchase",
        "status": "rejected",
        "previous_status": "approved",
        "reject_reason": "chargeback",
        "payout": Decimal("12.3456"),
        "amount": Decimal("99.9900"),
        "txid": "order-1",
        "user_agent": "Mozilla/5.0",
        "sub_ids": {"sub1": "s1"},
        "clicked_at": datetime(2026, 11, 26, tzinfo=UTC),
        "converted_at": datetime(2026, 11, 27, tzinfo=UTC),
        "occurred_at": datetime(2026, 11, 28, tzinfo=UTC),
    }
    fields.update(overrides)
    return ConversionEventV2.model_validate(fields)


def test_v2_round_trip_keeps_lifecycle_fields_and_money_exact() -> None:
    event = make_v2()
    raw = orjson.loads(event.to_json())
    assert raw["schema_version"] == 2
    assert (raw["payout"], raw["amount"], raw["currency"]) == ("12.3456", "99.9900", "USD")
    assert (raw["status"], raw["previous_status"], raw["sequence"]) == ("rejected", "approved", 3)
    decoded = decode_conversion_event(event.to_json())
    assert decoded == event
    assert isinstance(decoded, ConversionEventV2)
    assert decoded.status is ConversionStatus.REJECTED


def test_v1_events_still_decode_and_count_as_approved() -> None:
    decoded = decode_conversion_event(make_event().to_json())
    assert isinstance(decoded, ConversionEvent)
    assert decoded.status is ConversionStatus.APPROVED


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"status": "paid"}, "status"),
        ({"sequence": 0}, "sequence"),
        ({"event_type": "conversion.deleted"}, "event_type"),
        ({"goal": None}, "goal"),
    ],
)
def test_bad_v2_events_are_rejected_with_a_reason(override: dict[str, object], reason: str) -> None:
    raw = orjson.loads(make_v2().to_json())
    raw.update(override)
    with pytest.raises(ContractError, match=reason):
        decode_conversion_event(orjson.dumps(raw))


def test_a_boolean_schema_version_is_not_version_1() -> None:
    raw = orjson.loads(make_event().to_json())
    raw["schema_version"] = True
    with pytest.raises(ContractError, match="unsupported schema_version"):
        decode_conversion_event(orjson.dumps(raw))
