"""The conversion events: what the gateway publishes and the dispatcher consumes.

Versioned and self-contained: an event carries every value a postback macro
needs, so the dispatcher never reads the clicks table. Money travels as a
decimal string, never a float.

- Version 1: ``conversion.created`` of an approved conversion (older gateways).
- Version 2: ``conversion.created`` and ``conversion.status_changed``, with the
  goal, the status (and the previous one) and a per-conversion ``sequence``
  (1 = created, +1 per change) so consumers can keep a conversion's events in
  order. Consumers accept both during a rolling upgrade.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, ValidationError

from postback_core.enums import ConversionStatus

SCHEMA_VERSION: Final = 1  # the first version; decoders accept SCHEMA_VERSIONS
SCHEMA_VERSION_2: Final = 2
SCHEMA_VERSIONS: Final = frozenset({SCHEMA_VERSION, SCHEMA_VERSION_2})
CONVERSION_CREATED: Final = "conversion.created"
CONVERSION_STATUS_CHANGED: Final = "conversion.status_changed"

DecimalString = Annotated[
    Decimal, PlainSerializer(lambda d: format(d, "f"), return_type=str, when_used="json")
]


class SubIds(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sub1: str | None = None
    sub2: str | None = None
    sub3: str | None = None
    sub4: str | None = None
    sub5: str | None = None


class ConversionEvent(BaseModel):
    """Schema version 1 of ``conversion.created``."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = SCHEMA_VERSION
    event_type: Literal["conversion.created"] = CONVERSION_CREATED
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    conversion_id: int
    click_id: int
    external_id: str | None = None
    publisher_id: int
    smartlink_id: int | None = None
    offer_id: int | None = None
    advertiser_id: int | None = None
    payout: DecimalString
    currency: str = "USD"
    txid: str | None = None
    country: str | None = None
    ip: str | None = None
    os: str | None = None
    device: str | None = None
    sub_ids: SubIds = SubIds()
    occurred_at: datetime

    @property
    def status(self) -> ConversionStatus:
        """Version 1 only ever announced approved conversions."""
        return ConversionStatus.APPROVED

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))


class ConversionEventV2(BaseModel):
    """Schema version 2: a conversion was created, or its status changed.

    The fields of version 1 keep their names and meaning (``payout`` is what
    the publisher is paid, ``occurred_at`` when this event happened); the
    lifecycle adds the goal, statuses and ``sequence``.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[2] = SCHEMA_VERSION_2
    event_type: Literal["conversion.created", "conversion.status_changed"] = CONVERSION_CREATED
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    conversion_id: int
    sequence: int = Field(ge=1)
    click_id: int
    external_id: str | None = None
    publisher_id: int
    smartlink_id: int | None = None
    offer_id: int | None = None
    advertiser_id: int | None = None
    goal: str
    status: ConversionStatus
    previous_status: ConversionStatus | None = None
    reject_reason: str | None = None
    payout: DecimalString
    amount: DecimalString | None = None  # what the advertiser reported (revenue share)
    currency: str = "USD"
    txid: str | None = None
    country: str | None = None
    ip: str | None = None
    os: str | None = None
    device: str | None = None
    user_agent: str | None = None
    sub_ids: SubIds = SubIds()
    clicked_at: datetime | None = None
    converted_at: datetime
    occurred_at: datetime

    def to_json(self) -> bytes:
        # pydantic's own serializer: the same JSON as orjson over model_dump, in half the time
        # (the gateway builds one per conversion).
        return self.model_dump_json().encode()


AnyConversionEvent = ConversionEvent | ConversionEventV2


class ContractError(ValueError):
    """A message that is not a valid conversion event; ``reason`` is for operators."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_conversion_event(body: bytes) -> AnyConversionEvent:
    """Parse a message body, telling bad JSON, unknown versions and missing fields apart."""
    try:
        raw: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ContractError(f"malformed JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ContractError("event must be a JSON object")
    version = raw.get("schema_version")
    if type(version) is not int or version not in SCHEMA_VERSIONS:
        raise ContractError(f"unsupported schema_version: {version!r}")
    model = ConversionEvent if version == SCHEMA_VERSION else ConversionEventV2
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ContractError(f"invalid event: {problems}") from exc


# 64-bit ids (click ids) leave our HTTP APIs as JSON strings: JavaScript and
# many JSON tools read numbers as doubles and would silently round them.
IdString = Annotated[int, PlainSerializer(str, return_type=str, when_used="json")]
