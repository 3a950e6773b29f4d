"""SmartLink API shapes."""

from __future__ import annotations

import re
from datetime import datetime
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator

from click_gateway.pagination import MAX_BIGINT
from postback_core.web import RequestModel

CODE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{3,64}$")
MAX_OFFERS_PER_SMARTLINK = 500
MAX_URL_LENGTH = 2048


def _fallback_url(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if len(value) > MAX_URL_LENGTH or any(ch.isspace() for ch in value):
        raise ValueError("fallback_url must be a URL without spaces, at most 2048 characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("fallback_url must be an absolute http:// or https:// URL")
    return value


def _offer_ids(value: list[int] | None) -> list[int] | None:
    if value is None:
        return None
    for offer_id in value:
        if not 1 <= offer_id <= MAX_BIGINT:
            raise ValueError(f"offer id {offer_id} is out of range")
    return list(dict.fromkeys(value))


class SmartLinkCreate(RequestModel):
    publisher_id: int = Field(gt=0, le=MAX_BIGINT)
    offer_ids: list[int] = Field(max_length=MAX_OFFERS_PER_SMARTLINK)
    code: str | None = Field(
        None,
        description="3-64 of A-Z a-z 0-9 _ -; generated (short, unguessable) when absent.",
    )
    fallback_url: str | None = Field(
        None, description="Where visitors go when no offer matches them."
    )

    _clean_offer_ids = field_validator("offer_ids")(classmethod(lambda cls, v: _offer_ids(v)))
    _clean_fallback = field_validator("fallback_url")(classmethod(lambda cls, v: _fallback_url(v)))

    @field_validator("code")
    @classmethod
    def _code_shape(cls, value: str | None) -> str | None:
        if value is not None and not CODE_PATTERN.fullmatch(value):
            raise ValueError("code must be 3 to 64 characters of A-Z, a-z, 0-9, '_' or '-'")
        return value


class SmartLinkUpdate(RequestModel):
    """Only the fields sent are changed; ``fallback_url: null`` removes it."""

    is_active: bool | None = None
    offer_ids: list[int] | None = Field(None, max_length=MAX_OFFERS_PER_SMARTLINK)
    fallback_url: str | None = None

    _clean_offer_ids = field_validator("offer_ids")(classmethod(lambda cls, v: _offer_ids(v)))
    _clean_fallback = field_validator("fallback_url")(classmethod(lambda cls, v: _fallback_url(v)))


class SmartLinkRead(BaseModel):
    id: int
    publisher_id: int
    code: str
    url: str = Field(description="The link to give the publisher: <base>/get/<code>.")
    offer_ids: list[int]
    fallback_url: str | None
    is_active: bool
    created_at: datetime
    updated_at: datetime
