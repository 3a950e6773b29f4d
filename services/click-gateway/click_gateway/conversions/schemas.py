"""Conversion API shapes."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, Field, PlainSerializer

from click_gateway.offers.schemas import PayoutAmount
from click_gateway.pagination import MAX_BIGINT
from postback_core.contracts import IdString
from postback_core.web import RequestModel

MAX_TXID_LENGTH = 128
ClickId = Annotated[int, Field(gt=0, le=MAX_BIGINT, description="Our internal click id.")]


class ConversionCreate(RequestModel):
    click_id: ClickId
    payout: PayoutAmount | None = Field(
        None, description="Decimal amount in USD; default: the offer's payout."
    )
    txid: str | None = Field(
        None,
        max_length=MAX_TXID_LENGTH,
        description="Your transaction id: one conversion per (click_id, txid).",
    )


class ConversionRead(BaseModel):
    conversion_id: int
    click_id: IdString
    payout: Annotated[
        Decimal, PlainSerializer(lambda d: format(d, "f"), return_type=str, when_used="json")
    ]
    txid: str | None
    status: str
    created_at: datetime
