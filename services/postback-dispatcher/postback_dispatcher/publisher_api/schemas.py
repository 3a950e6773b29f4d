"""Request and response shapes of the publisher API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from postback_core.enums import AttemptOutcome, AttemptTrigger
from postback_core.macros import MAX_TEMPLATE_LENGTH
from postback_core.postback_settings import MAX_SECURITY_TOKEN_LENGTH
from postback_core.web import RequestModel


class MyPostbackSettings(BaseModel):
    publisher_id: int
    configured: bool = Field(description="false until a postback URL is saved")
    url_template: str | None
    security_token: str | None = Field(description="masked; the full token is never shown")
    has_security_token: bool
    example_url: str | None = Field(
        description="the template rendered with the guide's example values (token masked)"
    )
    warnings: list[str]
    updated_at: datetime | None


class MyPostbackSettingsUpdate(RequestModel):
    """``security_token`` omitted keeps the current token; null or "" removes it."""

    model_config = ConfigDict(extra="forbid")

    url_template: str = Field(
        max_length=MAX_TEMPLATE_LENGTH,
        examples=["https://yourdomain.com/postback?click_id={external_id}&payout={payout}"],
    )
    security_token: str | None = Field(None, max_length=MAX_SECURITY_TOKEN_LENGTH)


class TemplateCheck(RequestModel):
    model_config = ConfigDict(extra="forbid")

    url_template: str = Field(max_length=MAX_TEMPLATE_LENGTH)
    security_token: str | None = Field(None, max_length=MAX_SECURITY_TOKEN_LENGTH)


class PreviewResult(BaseModel):
    valid: bool
    url: str | None = Field(description="rendered with example values, token masked")
    error: str | None
    unknown_macros: list[str]
    warnings: list[str]


class TestPostbackRequest(RequestModel):
    """Both optional: by default the saved template and token are used."""

    model_config = ConfigDict(extra="forbid")

    url_template: str | None = Field(None, max_length=MAX_TEMPLATE_LENGTH)
    security_token: str | None = Field(None, max_length=MAX_SECURITY_TOKEN_LENGTH)


class TestPostbackResult(BaseModel):
    ok: bool
    url: str = Field(description="the URL that was called, token masked")
    status: int | None
    latency_ms: float
    response_excerpt: str | None
    error_class: str | None
    error_message: str | None
    attempt_id: int


class PostbackAttempt(BaseModel):
    id: int
    conversion_id: int | None
    trigger: AttemptTrigger
    outcome: AttemptOutcome
    sequence: int
    attempt_no: int
    url: str | None
    http_status: int | None
    latency_ms: float | None
    error_class: str | None
    error_message: str | None
    response_excerpt: str | None
    created_at: datetime


class PostbackAttemptPage(BaseModel):
    items: list[PostbackAttempt]
    next_cursor: str | None


class PostbackAttemptQuery(RequestModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(25, ge=1, le=200)
    cursor: str | None = Field(None, max_length=200)
    status: int | None = Field(None, ge=0, le=999, description="HTTP status")
    outcome: AttemptOutcome | None = None
    trigger: AttemptTrigger | None = None
