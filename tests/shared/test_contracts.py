from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest

from postback_core.contracts import ContractError, ConversionEvent, decode_conversion_event


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
