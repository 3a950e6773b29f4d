"""Advertiser API shapes. An API key appears once: in the creation or rotation response."""

from __future__ import annotations

import ipaddress
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from postback_core.web import RequestModel

MAX_ALLOWED_NETWORKS = 100


def _clean_name(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("name must not be blank")
    if "\x00" in value:
        raise ValueError("name must not contain NUL characters")
    return value


class AdvertiserCreate(RequestModel):
    name: str = Field(min_length=1, max_length=200, examples=["Acme Games"])

    _name = field_validator("name")(classmethod(lambda cls, v: _clean_name(v)))


class AdvertiserUpdate(RequestModel):
    """Only the fields sent are changed; ``allowed_ips: null`` allows every address again."""

    name: str | None = Field(None, min_length=1, max_length=200)
    is_active: bool | None = None
    allowed_ips: list[str] | None = Field(
        None,
        max_length=MAX_ALLOWED_NETWORKS,
        description="CIDR networks (or single addresses) conversions may come from.",
        examples=[["203.0.113.0/24", "2001:db8::1"]],
    )

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str | None) -> str | None:
        return None if value is None else _clean_name(value)

    @field_validator("allowed_ips")
    @classmethod
    def _networks(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        networks: list[str] = []
        for text in value:
            try:
                networks.append(str(ipaddress.ip_network(text.strip(), strict=False)))
            except ValueError:
                raise ValueError(f"{text[:60]!r} is not an IP address or CIDR network") from None
        return list(dict.fromkeys(networks))


class AdvertiserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    is_active: bool
    allowed_ips: list[str] | None = None
    previous_key_expires_at: datetime | None = None
    created_at: datetime

    @field_validator("allowed_ips", mode="before")
    @classmethod
    def _as_text(cls, value: object) -> object:
        if isinstance(value, list):
            return [str(v) for v in value]
        return value


class AdvertiserCreated(AdvertiserRead):
    api_key: str = Field(description="Shown only now; stored as a hash.")
