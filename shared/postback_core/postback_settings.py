"""A publisher's postback settings: validation, storage and the masked view.

Lives in the shared package because two APIs edit the same settings: the
gateway's admin API (operators) and the dispatcher's publisher API
(publishers themselves). Both must accept and refuse exactly the same
templates, so both call :func:`save_postback_settings`.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field, field_validator
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from postback_core.db.models import PostbackSettings
from postback_core.macros import (
    MAX_TEMPLATE_LENGTH,
    TemplateError,
    find_macros,
    validate_postback_template,
)
from postback_core.security import mask_in_text, mask_secret, restore_masked_credentials
from postback_core.web import RequestModel

MAX_SECURITY_TOKEN_LENGTH = 200


class PostbackSettingsUpdate(RequestModel):
    """``security_token`` omitted keeps the current token; ``null`` or "" removes it."""

    url_template: str = Field(
        max_length=MAX_TEMPLATE_LENGTH,
        description="Absolute http(s) URL with macros such as {click_id} and {payout}.",
        examples=["https://tracker.example.com/postback?cid={external_id}&sum={payout}"],
    )
    security_token: str | None = Field(
        None,
        max_length=MAX_SECURITY_TOKEN_LENGTH,
        description=(
            "Sent as {security_token} so the publisher can verify the postback."
            " Omitted: the current token is kept; null or empty: removed."
        ),
    )

    @field_validator("url_template")
    @classmethod
    def _strip_template(cls, value: str) -> str:
        return value.strip()

    @field_validator("security_token")
    @classmethod
    def _empty_token_is_none(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        return value or None


class PostbackSettingsRead(BaseModel):
    publisher_id: int
    url_template: str = Field(description="A password in the URL (user:pass@) is masked.")
    security_token: str | None = Field(description="Masked; the full token is never shown.")
    updated_at: datetime
    warnings: list[str]


def template_warnings(url_template: str, security_token: str | None) -> list[str]:
    """Warnings for a template (raises TemplateError when it can't be saved at all)."""
    warnings = validate_postback_template(url_template)
    if "security_token" in find_macros(url_template) and not security_token:
        warnings.append(
            "the template uses {security_token} but no security_token is set: it will be sent empty"
        )
    return warnings


def _read(row: PostbackSettings) -> PostbackSettingsRead:
    try:
        warnings = template_warnings(row.url_template, row.security_token)
    except TemplateError as exc:  # stored before a rule tightened; still show it
        warnings = [str(exc)]
    return PostbackSettingsRead(
        publisher_id=row.publisher_id,
        url_template=mask_in_text(row.url_template),
        security_token=mask_secret(row.security_token),
        updated_at=row.updated_at,
        warnings=warnings,
    )


async def get_postback_settings(
    session: AsyncSession, publisher_id: int
) -> PostbackSettingsRead | None:
    row = await session.scalar(
        select(PostbackSettings).where(PostbackSettings.publisher_id == publisher_id)
    )
    return _read(row) if row is not None else None


async def save_postback_settings(
    session: AsyncSession, publisher_id: int, update: PostbackSettingsUpdate
) -> PostbackSettingsRead:
    """Validate and upsert; raises ``TemplateError`` (naming unknown macros) before writing.

    A ``security_token`` left out of the update keeps the stored one; a template
    saved back as it was shown (password masked) keeps the real password. The
    caller checks that the publisher exists; the caller's unit of work commits.
    """
    stored = (
        await session.execute(
            select(PostbackSettings.url_template, PostbackSettings.security_token).where(
                PostbackSettings.publisher_id == publisher_id
            )
        )
    ).one_or_none()
    url_template = restore_masked_credentials(
        update.url_template, stored.url_template if stored else None
    )
    security_token = update.security_token
    if "security_token" not in update.model_fields_set:
        security_token = stored.security_token if stored else None
    warnings = template_warnings(url_template, security_token)
    statement = (
        insert(PostbackSettings)
        .values(
            publisher_id=publisher_id,
            url_template=url_template,
            security_token=security_token,
        )
        .on_conflict_do_update(
            index_elements=[PostbackSettings.publisher_id],
            set_={
                "url_template": url_template,
                "security_token": security_token,
                "updated_at": func.clock_timestamp(),
            },
        )
        .returning(PostbackSettings.updated_at)
    )
    updated_at = (await session.execute(statement)).scalar_one()
    return PostbackSettingsRead(
        publisher_id=publisher_id,
        url_template=mask_in_text(url_template),
        security_token=mask_secret(security_token),
        updated_at=updated_at,
        warnings=warnings,
    )


def template_error_detail(exc: TemplateError) -> str:
    """The 422 ``detail`` for a refused template (names each unknown macro)."""
    return str(exc)
