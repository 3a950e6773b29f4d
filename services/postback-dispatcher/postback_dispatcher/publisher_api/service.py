"""What a publisher can do with their own postback: read, save, preview, test, review.

Shared by the JSON API and the Postback Settings page, so both validate and
answer identically. Validation is the shared one (``postback_core``), the
same the operators' admin endpoint uses.
"""

from __future__ import annotations

import time
import uuid
from collections import deque

from sqlalchemy.ext.asyncio import AsyncSession

from postback_core.db.models import DeliveryAttempt, PostbackSettings
from postback_core.enums import AttemptOutcome, AttemptTrigger
from postback_core.macros import EXAMPLE_VALUES, TemplateError
from postback_core.postback_settings import (
    PostbackSettingsUpdate,
    save_postback_settings,
    template_warnings,
)
from postback_core.security import mask_in_text, mask_secret, restore_masked_credentials
from postback_dispatcher.pagination import decode_id_cursor, encode_cursor
from postback_dispatcher.publisher_api import schemas
from postback_dispatcher.publisher_api.repository import PublisherRepository
from postback_dispatcher.rendering import render_postback_url
from postback_dispatcher.sender import PostbackSender
from postback_dispatcher.signing import postback_headers

TEST_HEADER = "X-Postback-Test"
EXCERPT_CHARS = 500


class NoPostbackUrl(LookupError):
    """A test was asked for but there is neither a saved nor a supplied template."""


class TooManyTests(RuntimeError):
    pass


class TestRateLimit:
    """Test postbacks make us call a URL of the publisher's choosing: keep it a trickle."""

    def __init__(self, per_minute: int = 20) -> None:
        self.per_minute = per_minute
        self._sent: dict[int, deque[float]] = {}

    def check(self, publisher_id: int) -> None:
        now = time.monotonic()
        sent = self._sent.setdefault(publisher_id, deque())
        while sent and now - sent[0] > 60:
            sent.popleft()
        if len(sent) >= self.per_minute:
            raise TooManyTests(f"at most {self.per_minute} test postbacks per minute")
        sent.append(now)


def example_values(publisher_id: int, security_token: str | None) -> dict[str, str]:
    """The guide's example values, with the publisher's real id and token."""
    values = dict(EXAMPLE_VALUES)
    values["publisher_id"] = str(publisher_id)
    values["security_token"] = security_token or ""
    return values


def masked_example_url(publisher_id: int, template: str, security_token: str | None) -> str:
    url = render_postback_url(template, example_values(publisher_id, security_token))
    return mask_in_text(url, security_token, url=url)


def settings_view(publisher_id: int, row: PostbackSettings | None) -> schemas.MyPostbackSettings:
    if row is None:
        return schemas.MyPostbackSettings(
            publisher_id=publisher_id,
            configured=False,
            url_template=None,
            security_token=None,
            has_security_token=False,
            example_url=None,
            warnings=[],
            updated_at=None,
        )
    try:
        warnings = template_warnings(row.url_template, row.security_token)
    except TemplateError as exc:  # saved before a rule tightened; still show it
        warnings = [str(exc)]
    return schemas.MyPostbackSettings(
        publisher_id=publisher_id,
        configured=True,
        url_template=mask_in_text(row.url_template),
        security_token=mask_secret(row.security_token),
        has_security_token=bool(row.security_token),
        example_url=masked_example_url(publisher_id, row.url_template, row.security_token),
        warnings=warnings,
        updated_at=row.updated_at,
    )


async def get_settings(session: AsyncSession, publisher_id: int) -> schemas.MyPostbackSettings:
    return settings_view(publisher_id, await PublisherRepository(session).settings(publisher_id))


async def save_settings(
    session: AsyncSession,
    publisher_id: int,
    url_template: str,
    security_token: str | None,
    *,
    keep_current_token: bool,
) -> schemas.MyPostbackSettings:
    """Validate (raises TemplateError naming unknown macros) and save."""
    repo = PublisherRepository(session)
    if keep_current_token:
        current = await repo.settings(publisher_id)
        security_token = current.security_token if current else None
    update = PostbackSettingsUpdate(url_template=url_template, security_token=security_token)
    saved = await save_postback_settings(session, publisher_id, update)
    view = settings_view(
        publisher_id,
        PostbackSettings(
            publisher_id=publisher_id,
            url_template=update.url_template,
            security_token=update.security_token,
            updated_at=saved.updated_at,
        ),
    )
    view.warnings = saved.warnings
    return view


def preview(
    publisher_id: int, url_template: str, security_token: str | None
) -> schemas.PreviewResult:
    """Check a template as the save would, and render it with example values."""
    try:
        warnings = template_warnings(url_template.strip(), security_token)
    except TemplateError as exc:
        return schemas.PreviewResult(
            valid=False,
            url=None,
            error=str(exc),
            unknown_macros=list(exc.unknown_macros),
            warnings=[],
        )
    return schemas.PreviewResult(
        valid=True,
        url=masked_example_url(publisher_id, url_template, security_token),
        error=None,
        unknown_macros=[],
        warnings=warnings,
    )


async def send_test(
    session: AsyncSession,
    sender: PostbackSender,
    publisher_id: int,
    request: schemas.TestPostbackRequest,
) -> schemas.TestPostbackResult:
    """Fire one real postback with example values, marked as a test, and log it."""
    repo = PublisherRepository(session)
    saved = await repo.settings(publisher_id)
    stored_template = saved.url_template if saved else None
    template = (
        restore_masked_credentials(request.url_template, stored_template)
        if request.url_template
        else stored_template
    )
    if not template:
        raise NoPostbackUrl("no postback URL saved yet: save one or send url_template")
    token = (
        request.security_token
        if "security_token" in request.model_fields_set
        else (saved.security_token if saved else None)
    ) or None
    template_warnings(template.strip(), token)  # raises TemplateError like a save would
    url = render_postback_url(template, example_values(publisher_id, token))
    test_id = f"test-{uuid.uuid4()}"

    def headers_for(hop_url: str) -> dict[str, str]:
        return postback_headers(test_id, hop_url, token) | {TEST_HEADER: "1"}

    result = await sender.send(url, headers_for(url), headers_for=headers_for)
    # The sender cut the body: a secret may be left half-shown at the cut.
    excerpt = (
        mask_in_text(result.response_excerpt, token, url=url, cut=True)
        if result.response_excerpt
        else None
    )
    # Masked before this cut, so none is left half-shown here.
    excerpt = excerpt[:EXCERPT_CHARS] if excerpt else None
    masked_url = mask_in_text(url, token, url=url)
    error_message = _masked(result.error_message, token, url)
    attempt = await repo.record_attempt(
        DeliveryAttempt(
            conversion_id=None,
            event_id=None,
            publisher_id=publisher_id,
            sequence=0,
            attempt_no=1,
            trigger=AttemptTrigger.TEST,
            outcome=AttemptOutcome.DELIVERED if result.ok else AttemptOutcome.FAILED,
            url_masked=masked_url,
            http_status=result.status,
            duration_ms=result.duration_ms,
            error_class=result.error_class,
            error_message=error_message,
            response_excerpt=excerpt,
        )
    )
    return schemas.TestPostbackResult(
        ok=result.ok,
        url=masked_url,
        status=result.status,
        latency_ms=result.duration_ms,
        response_excerpt=excerpt,
        error_class=result.error_class,
        error_message=error_message,
        attempt_id=attempt.id,
    )


def _masked(text: str | None, token: str | None, url: str | None = None) -> str | None:
    return mask_in_text(text, token, url=url) if text else text


def to_attempt(row: DeliveryAttempt, token: str | None = None) -> schemas.PostbackAttempt:
    """One attempt as shown; the current token is masked again in rows logged before masking."""
    return schemas.PostbackAttempt(
        id=row.id,
        conversion_id=row.conversion_id,
        trigger=AttemptTrigger(row.trigger),
        outcome=AttemptOutcome(row.outcome),
        sequence=row.sequence,
        attempt_no=row.attempt_no,
        url=_masked(row.url_masked, token),
        http_status=row.http_status,
        latency_ms=float(row.duration_ms) if row.duration_ms is not None else None,
        error_class=row.error_class,
        error_message=_masked(row.error_message, token),
        response_excerpt=_masked(row.response_excerpt, token),
        created_at=row.created_at,
    )


async def recent_postbacks(
    session: AsyncSession, publisher_id: int, query: schemas.PostbackAttemptQuery
) -> schemas.PostbackAttemptPage:
    before_id = decode_id_cursor(query.cursor) if query.cursor else None
    repo = PublisherRepository(session)
    saved = await repo.settings(publisher_id)
    token = saved.security_token if saved else None
    rows = await repo.recent_attempts(
        publisher_id,
        limit=query.limit,
        before_id=before_id,
        http_status=query.status,
        outcome=query.outcome,
        trigger=query.trigger,
    )
    page = rows[: query.limit]
    next_cursor = encode_cursor(page[-1].id) if len(rows) > query.limit else None
    return schemas.PostbackAttemptPage(
        items=[to_attempt(r, token) for r in page], next_cursor=next_cursor
    )
