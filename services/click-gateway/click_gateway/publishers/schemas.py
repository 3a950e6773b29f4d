"""Publisher API shapes. The API key appears once, in the creation response."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from postback_core.web import RequestModel


class PublisherCreate(RequestModel):
    name: str = Field(min_length=1, max_length=200, examples=["Acme Installs"])

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("name must not be blank")
        return value


class PublisherRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    is_active: bool
    created_at: datetime


class PublisherCreated(PublisherRead):
    api_key: str = Field(description="Shown only now; stored as a hash.")
