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
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationError,
)

from postback_core.enums import ConversionStatus

SCHEMA_VERSION: Final = 1  # the first version; decoders accept SCHEMA_VERSIONS
SCHEMA_VERSION_2: Final = 2
SCHEMA_VERSIONS: Final = frozenset({SCHEMA_VERSION, SCHEMA_VERSION_2})
CONVERSION_CREATED: Final = "conversion.created"
CONVERSION_STATUS_CHANGED: Final = "conversion.status_changed"

# Ranges of the columns these values end up in: a value outside them decodes
# fine but fails in SQL later, after it has been batched with valid messages.
MAX_ID: Final = 2**63 - 1  # bigint
PAYOUT_WHOLE_DIGITS: Final = 8  # Numeric(12, 4)
PAYOUT_DECIMALS: Final = 4
MAX_PAYOUT: Final = Decimal("99999999.9999")
MAX_TEXT_CHARS: Final = 1024
MAX_SEQUENCE: Final = 2**31 - 1  # integer
# A real event is well under 2 KiB; anything this big is not one, and copying it
# (retry tier, dead letter) would push the broker towards its frame limits.
MAX_EVENT_BYTES: Final = 64 * 1024


def _no_nul(value: str) -> str:
    # PostgreSQL text can't hold NUL: a NUL would fail every statement it joins.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Id = Annotated[int, Field(ge=1, le=MAX_ID)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS), AfterValidator(_no_nul)]
# User agents are stored whole up to the click path's own cap (clicks/visitor.py).
LongText = Annotated[str, StringConstraints(max_length=4 * MAX_TEXT_CHARS), AfterValidator(_no_nul)]
DecimalString = Annotated[
    Decimal, PlainSerializer(lambda d: format(d, "f"), return_type=str, when_used="json")
]
Payout = Annotated[
    DecimalString,
    Field(
        ge=0,
        le=MAX_PAYOUT,
        max_digits=PAYOUT_WHOLE_DIGITS + PAYOUT_DECIMALS,
        decimal_places=PAYOUT_DECIMALS,
        allow_inf_nan=False,
    ),
]


class SubIds(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sub1: Text | None = None
    sub2: Text | None = None
    sub3: Text | None = None
    sub4: Text | None = None
    sub5: Text | None = None


class _ConversionFields(BaseModel):
    """What every version of the event carries, with the same names, meaning and ranges."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    conversion_id: Id
    click_id: Id
    external_id: Text | None = None
    publisher_id: Id
    smartlink_id: Id | None = None
    offer_id: Id | None = None
    advertiser_id: Id | None = None
    payout: Payout
    currency: Text = "USD"
    txid: Text | None = None
    country: Text | None = None
    ip: Text | None = None
    os: Text | None = None
    device: Text | None = None
    sub_ids: SubIds = SubIds()
    occurred_at: datetime


class ConversionEvent(_ConversionFields):
    """Schema version 1 of ``conversion.created``."""

    schema_version: Literal[1] = SCHEMA_VERSION
    event_type: Literal["conversion.created"] = CONVERSION_CREATED

    @property
    def status(self) -> ConversionStatus:
        """Version 1 only ever announced approved conversions."""
        return ConversionStatus.APPROVED

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))


class ConversionEventV2(_ConversionFields):
    """Schema version 2: a conversion was created, or its status changed.

    The fields of version 1 keep their names and meaning (``payout`` is what
    the publisher is paid, ``occurred_at`` when this event happened); the
    lifecycle adds the goal, statuses and ``sequence``.
    """

    schema_version: Literal[2] = SCHEMA_VERSION_2
    event_type: Literal["conversion.created", "conversion.status_changed"] = CONVERSION_CREATED
    sequence: int = Field(ge=1, le=MAX_SEQUENCE)
    goal: Text
    status: ConversionStatus
    previous_status: ConversionStatus | None = None
    reject_reason: Text | None = None
    amount: Payout | None = None  # what the advertiser reported (revenue share)
    user_agent: LongText | None = None
    clicked_at: datetime | None = None
    converted_at: datetime

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


class OversizedEvent(ContractError):
    """A message body larger than ``MAX_EVENT_BYTES``: not read at all."""

    def __init__(self, size: int) -> None:
        super().__init__(f"message of {size} bytes exceeds the {MAX_EVENT_BYTES}-byte maximum")
        self.size = size


def decode_conversion_event(body: bytes) -> AnyConversionEvent:
    """Parse a message body, telling bad JSON, unknown versions and missing fields apart.

    Every value is range-checked against the column it is stored in, so a
    poison event is refused here, with its reason, instead of failing in SQL.
    """
    if len(body) > MAX_EVENT_BYTES:
        raise OversizedEvent(len(body))
    try:
        raw: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ContractError(f"malformed JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ContractError("event must be a JSON object")
    version = raw.get("schema_version")
    if type(version) is not int or version not in SCHEMA_VERSIONS:
        raise ContractError(f"unsupported schema_version: {repr(version)[:50]}")
    model = ConversionEvent if version == SCHEMA_VERSION else ConversionEventV2
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])[:100]}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)[:10]
        )
        raise ContractError(f"invalid event: {problems}") from exc


# 64-bit ids (click ids) leave our HTTP APIs as JSON strings: JavaScript and
# many JSON tools read numbers as doubles and would silently round them.
IdString = Annotated[int, PlainSerializer(str, return_type=str, when_used="json")]
