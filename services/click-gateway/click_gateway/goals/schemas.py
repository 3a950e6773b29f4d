"""Goal API shapes: a fixed payout or a revenue share, a hold, caps."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, model_validator

from click_gateway.offers.schemas import PayoutAmount
from postback_core.web import RequestModel

MAX_CAP = 2**31 - 1
MAX_HOLD_DAYS = 3650
GoalSlug = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
        examples=["install", "registration", "purchase"],
    ),
]
Percent = Annotated[
    Decimal,
    Field(ge=0, le=100, decimal_places=4, allow_inf_nan=False, examples=["30"]),
    PlainSerializer(lambda d: format(d, "f"), return_type=str, when_used="json"),
]
Cap = Annotated[int, Field(ge=0, le=MAX_CAP)]
HoldDays = Annotated[int, Field(ge=0, le=MAX_HOLD_DAYS)]


class GoalCreate(RequestModel):
    name: GoalSlug
    payout: PayoutAmount | None = Field(None, description="Fixed payout (USD).")
    revenue_share_percent: Percent | None = Field(
        None, description="Or: this percentage of the amount the advertiser reports."
    )
    hold_days: HoldDays | None = Field(
        0, description="0: approved at once; N: pending for N days; null: until decided."
    )
    daily_cap: Cap | None = Field(None, description="Conversions per UTC day; null: no cap.")
    total_cap: Cap | None = Field(None, description="Conversions in all; null: no cap.")
    allow_multiple: bool = Field(
        False, description="More than one conversion per click (told apart by txid)."
    )

    @model_validator(mode="after")
    def _one_payout_rule(self) -> GoalCreate:
        if (self.payout is None) == (self.revenue_share_percent is None):
            raise ValueError("give exactly one of payout and revenue_share_percent")
        return self


class GoalUpdate(RequestModel):
    """Only the fields sent are changed; ``null`` removes a cap or holds until decided."""

    name: GoalSlug | None = None
    payout: PayoutAmount | None = None
    revenue_share_percent: Percent | None = None
    hold_days: HoldDays | None = None
    daily_cap: Cap | None = None
    total_cap: Cap | None = None
    allow_multiple: bool | None = None


class GoalRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    offer_id: int
    name: str
    payout: PayoutAmount | None
    revenue_share_percent: Percent | None
    hold_days: int | None
    daily_cap: int | None
    total_cap: int | None
    allow_multiple: bool
    created_at: datetime
    updated_at: datetime
