"""Offer API shapes: money as Decimal, targeting lists normalised (``null`` = any)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, field_validator

from postback_core.web import RequestModel

# At most 4 decimals (the column's scale) so nothing is silently rounded; the
# upper bound (MAX_PAYOUT) is configuration, checked by the services.
PayoutAmount = Annotated[
    Decimal,
    Field(ge=0, decimal_places=4, allow_inf_nan=False, examples=["0.50"]),
    PlainSerializer(lambda d: format(d, "f"), return_type=str, when_used="json"),
]
Device = Literal["desktop", "mobile", "tablet", "other"]
MAX_WEIGHT = 1_000_000
MAX_ATTRIBUTION_WINDOW_DAYS = 3650


def _countries(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    cleaned: list[str] = []
    for code in value:
        code = code.strip().upper()
        if len(code) != 2 or not code.isascii() or not code.isalpha():
            raise ValueError(f"{code!r} is not an ISO 3166-1 alpha-2 country code")
        cleaned.append(code)
    return list(dict.fromkeys(cleaned)) or None


def _os_names(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    cleaned: list[str] = []
    for name in value:
        name = name.strip()
        if not name or len(name) > 50:
            raise ValueError("os names must be 1 to 50 characters")
        cleaned.append(name)
    return list(dict.fromkeys(cleaned)) or None


def _devices(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    return list(dict.fromkeys(value)) or None


class _Targeting(RequestModel):
    countries: list[str] | None = Field(
        None, max_length=300, description="ISO-2 codes (any case); null or [] = any country."
    )
    os: list[str] | None = Field(
        None,
        max_length=50,
        description='OS families as the UA parser names them ("Android", "iOS", "Windows").',
    )
    devices: list[Device] | None = Field(None, description="null or [] = any device.")

    _clean_countries = field_validator("countries")(classmethod(lambda cls, v: _countries(v)))
    _clean_os = field_validator("os")(classmethod(lambda cls, v: _os_names(v)))
    _clean_devices = field_validator("devices")(classmethod(lambda cls, v: _devices(v)))


class OfferCreate(_Targeting):
    advertiser_id: int = Field(gt=0)
    name: str = Field(min_length=1, max_length=200)
    url_template: str = Field(
        description="Absolute http(s) URL carrying {click_id}; see OFFER_URL_MACROS.",
        examples=["https://adv.example.com/install?clickid={click_id}&src={publisher_id}"],
    )
    payout: PayoutAmount
    weight: int = Field(100, ge=0, le=MAX_WEIGHT)
    attribution_window_days: int = Field(
        30,
        ge=0,
        le=MAX_ATTRIBUTION_WINDOW_DAYS,
        description="A conversion for an older click is stored rejected.",
    )


class OfferUpdate(_Targeting):
    """Only the fields sent are changed; ``countries: null`` means "any country"."""

    name: str | None = Field(None, min_length=1, max_length=200)
    url_template: str | None = None
    payout: PayoutAmount | None = None
    weight: int | None = Field(None, ge=0, le=MAX_WEIGHT)
    attribution_window_days: int | None = Field(None, ge=0, le=MAX_ATTRIBUTION_WINDOW_DAYS)
    is_active: bool | None = None


class OfferRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    advertiser_id: int
    name: str
    url_template: str
    payout: PayoutAmount
    countries: list[str] | None
    os: list[str] | None
    devices: list[str] | None
    weight: int
    attribution_window_days: int
    is_active: bool
    created_at: datetime
    updated_at: datetime
