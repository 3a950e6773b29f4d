"""The conversion event on the dispatcher's hot path: orjson into a slotted object.

``postback_core.contracts.decode_conversion_event`` (pydantic) is the contract.
:func:`decode_event` accepts the canonical shape the gateway publishes (exact
JSON types, hyphenated UUID, decimal-string payout, ISO 8601 timestamp) with a
few plain checks and hands anything else to the contract's decoder. The fast
path only accepts what pydantic accepts, with the same values (ranges included:
ids within bigint, payout within the money column, bounded NUL-free strings), so
the outcome is the contract's in every case: a malformed or poison event raises
the same ``ContractError`` (with its reason) and goes to the dead-letter queue.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeGuard

import orjson

from postback_core.contracts import (
    CONVERSION_CREATED,
    MAX_EVENT_BYTES,
    MAX_ID,
    MAX_TEXT_CHARS,
    SCHEMA_VERSION,
    AnyConversionEvent,
    ContractError,
    OversizedEvent,
    decode_conversion_event,
)
from postback_core.enums import ConversionStatus

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Within Numeric(12, 4) by its shape (anything else, e.g. "-0" or "0.50000", is
# left to the contract).
_PAYOUT = re.compile(r"[0-9]{1,8}(?:\.[0-9]{1,4})?")
_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
    r"(?:Z|[+-][0-9]{2}:[0-9]{2})?"
)
_SUB_IDS = frozenset({"sub1", "sub2", "sub3", "sub4", "sub5"})


class DispatchEvent:
    """The fields of a conversion event (validated) the dispatcher uses, as plain attributes.

    Schema v1 takes the fast path below; v2 (statuses, goals) goes through the
    contract's decoder. ``status`` is ``approved`` for every v1 event.
    """

    __slots__ = (
        "advertiser_id",
        "click_id",
        "conversion_id",
        "country",
        "currency",
        "device",
        "event_id",
        "external_id",
        "ip",
        "occurred_at",
        "offer_id",
        "os",
        "payout",
        "publisher_id",
        "smartlink_id",
        "status",
        "txid",
    )

    event_id: uuid.UUID
    conversion_id: int
    click_id: int
    external_id: str | None
    publisher_id: int
    smartlink_id: int | None
    offer_id: int | None
    advertiser_id: int | None
    payout: Decimal
    currency: str
    txid: str | None
    country: str | None
    ip: str | None
    os: str | None
    device: str | None
    occurred_at: datetime
    status: ConversionStatus

    @classmethod
    def from_model(cls, model: AnyConversionEvent) -> DispatchEvent:
        event = cls.__new__(cls)
        for name in cls.__slots__:
            setattr(event, name, getattr(model, name))
        return event


def _uuid(text: str) -> uuid.UUID:
    """``uuid.UUID(text)`` for a canonical (regex-checked) UUID, without its slow parse."""
    value = uuid.UUID.__new__(uuid.UUID)
    object.__setattr__(value, "int", int(text.replace("-", ""), 16))
    object.__setattr__(value, "is_safe", uuid.SafeUUID.unknown)
    return value


def _id(value: Any) -> TypeGuard[int]:
    return type(value) is int and 0 < value <= MAX_ID


def _text(value: object) -> TypeGuard[str | None]:
    """None or a str the contract's ``Text`` accepts (bounded, no NUL)."""
    return value is None or (
        type(value) is str and len(value) <= MAX_TEXT_CHARS and "\x00" not in value
    )


def _fast(raw: dict[str, Any]) -> DispatchEvent | None:
    """The event when ``raw`` has the canonical shape, else None (let pydantic decide)."""
    get = raw.get
    conversion_id = get("conversion_id")
    click_id = get("click_id")
    publisher_id = get("publisher_id")
    smartlink_id = get("smartlink_id")
    offer_id = get("offer_id")
    advertiser_id = get("advertiser_id")
    external_id = get("external_id")
    txid = get("txid")
    country = get("country")
    ip = get("ip")
    os = get("os")
    device = get("device")
    currency = get("currency", "USD")
    event_id = get("event_id")
    payout = get("payout")
    occurred_at = get("occurred_at")
    if not (
        _id(conversion_id)
        and _id(click_id)
        and _id(publisher_id)
        and (smartlink_id is None or _id(smartlink_id))
        and (offer_id is None or _id(offer_id))
        and (advertiser_id is None or _id(advertiser_id))
        and _text(external_id)
        and _text(txid)
        and _text(country)
        and _text(ip)
        and _text(os)
        and _text(device)
        and _text(currency)
        and type(currency) is str
        and type(event_id) is str
        and type(payout) is str
        and type(occurred_at) is str
        and get("event_type", CONVERSION_CREATED) == CONVERSION_CREATED
        and _UUID.fullmatch(event_id) is not None
        and _PAYOUT.fullmatch(payout) is not None
        and _TIMESTAMP.fullmatch(occurred_at) is not None
    ):
        return None
    if "sub_ids" in raw:
        sub_ids = raw["sub_ids"]
        if type(sub_ids) is not dict or not _SUB_IDS.issuperset(sub_ids):
            return None
        for value in sub_ids.values():
            if not _text(value):
                return None
    try:
        when = datetime.fromisoformat(occurred_at)
    except ValueError:
        return None  # e.g. month 13: the contract words the error
    event = DispatchEvent.__new__(DispatchEvent)
    event.event_id = _uuid(event_id)
    event.conversion_id = conversion_id
    event.click_id = click_id
    event.external_id = external_id
    event.publisher_id = publisher_id
    event.smartlink_id = smartlink_id
    event.offer_id = offer_id
    event.advertiser_id = advertiser_id
    event.payout = Decimal(payout)
    event.currency = currency
    event.txid = txid
    event.country = country
    event.ip = ip
    event.os = os
    event.device = device
    event.occurred_at = when
    event.status = ConversionStatus.APPROVED
    return event


def decode_event(body: bytes) -> DispatchEvent:
    """Decode and validate a message body; raises ``ContractError`` as the contract does.

    ``OversizedEvent`` (a ``ContractError``) when the body is over ``MAX_EVENT_BYTES``.
    """
    if len(body) > MAX_EVENT_BYTES:
        raise OversizedEvent(len(body))
    try:
        raw: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raw = None
    if (
        type(raw) is dict
        and type(raw.get("schema_version")) is int
        and raw["schema_version"] == SCHEMA_VERSION
    ):
        event = _fast(raw)
        if event is not None:
            return event
    # Anything unusual: the contract's own decoder (same acceptance, same reasons).
    return DispatchEvent.from_model(decode_conversion_event(body))


__all__ = ["ContractError", "DispatchEvent", "OversizedEvent", "decode_event"]
