"""Conversion API shapes."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, Field, PlainSerializer

from click_gateway.offers.schemas import PayoutAmount
from click_gateway.pagination import MAX_BIGINT
from postback_core.contracts import IdString
from postback_core.enums import ConversionActor, ConversionStatus
from postback_core.web import RequestModel, Text

MAX_TXID_LENGTH = 128
MAX_GOAL_LENGTH = 64
MAX_REASON_LENGTH = 200

ClickId = Annotated[int, Field(gt=0, le=MAX_BIGINT, description="Our internal click id.")]
ConversionId = Annotated[int, Field(gt=0, le=MAX_BIGINT)]
# What the advertiser reports (a sale's value): revenue-share goals pay a percentage of it.
ReportedAmount = Annotated[
    Decimal,
    Field(ge=0, lt=Decimal("10000000000"), decimal_places=4, allow_inf_nan=False),
    PlainSerializer(lambda d: format(d, "f"), return_type=str, when_used="json"),
]
Money = Annotated[
    Decimal, PlainSerializer(lambda d: format(d, "f"), return_type=str, when_used="json")
]
GoalName = Annotated[
    Text,
    Field(
        min_length=1,
        max_length=MAX_GOAL_LENGTH,
        description="The offer's goal; default: `default`.",
    ),
]


class ConversionCreate(RequestModel):
    click_id: ClickId
    goal: GoalName | None = None
    payout: PayoutAmount | None = Field(
        None, description="Decimal amount in USD; default: the goal's payout."
    )
    amount: ReportedAmount | None = Field(
        None, description="The sale's value; revenue-share goals pay a percentage of it."
    )
    txid: str | None = Field(
        None,
        max_length=MAX_TXID_LENGTH,
        description="Your transaction id: one conversion per (click_id, goal, txid).",
    )


class StatusUpdate(RequestModel):
    status: ConversionStatus
    reason: Text | None = Field(None, max_length=MAX_REASON_LENGTH)


class ConversionRead(BaseModel):
    conversion_id: int
    click_id: IdString
    goal: str
    payout: Money
    amount: Money | None = None
    txid: str | None
    status: str
    reject_reason: str | None = None
    created_at: datetime


class StatusHistoryEntry(BaseModel):
    status: ConversionStatus
    previous_status: ConversionStatus | None
    at: datetime
    by: ConversionActor
    advertiser_id: int | None = None
    reason: str | None


class ConversionDetail(ConversionRead):
    sequence: int
    hold_until: datetime | None
    offer_id: int | None
    publisher_id: int
    status_history: list[StatusHistoryEntry]


class ConversionPage(BaseModel):
    """One page, ordered by id; pass ``next_after_id`` back as ``after_id`` for the next."""

    items: list[ConversionRead]
    next_after_id: int | None
