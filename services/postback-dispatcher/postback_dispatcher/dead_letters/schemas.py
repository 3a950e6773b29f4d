"""Request and response shapes of the dead-letter API. Money leaves as a decimal string."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from postback_core.contracts import IdString
from postback_core.enums import AttemptOutcome, AttemptTrigger, DeadLetterReason, DeadLetterState
from postback_core.web import MAX_DB_ID, Moment, RequestModel
from postback_dispatcher.dead_letters.repository import DeadLetterFilters

MoneyString = Annotated[Decimal, PlainSerializer(lambda d: format(d, "f"), return_type=str)]


class DeadLetterFilterFields(RequestModel):
    """The filters shared by listing, bulk replay and bulk purge."""

    model_config = ConfigDict(extra="forbid")

    publisher_id: int | None = Field(None, ge=1, le=MAX_DB_ID)
    offer_id: int | None = Field(None, ge=1, le=MAX_DB_ID)
    reason: DeadLetterReason | None = Field(None, description="one of the stored reasons")
    last_status: int | None = Field(None, ge=0, le=999)
    since: Moment | None = Field(None, description="dead_at at or after this time")
    until: Moment | None = Field(None, description="dead_at before this time")

    def to_filters(self) -> DeadLetterFilters:
        return DeadLetterFilters(
            publisher_id=self.publisher_id,
            offer_id=self.offer_id,
            reason=self.reason or None,
            last_status=self.last_status,
            since=self.since,
            until=self.until,
        )


class DeadLetterListQuery(DeadLetterFilterFields):
    limit: int = Field(50, ge=1, le=500)
    cursor: str | None = Field(None, max_length=500)


class BulkReplayRequest(DeadLetterFilterFields):
    dry_run: bool = False
    limit: int | None = Field(
        None, ge=1, le=100_000, description="replay at most this many (oldest first)"
    )


class PurgeRequest(DeadLetterFilterFields):
    confirm: bool = Field(False, description="must be true: purging can't be undone")
    dry_run: bool = Field(False, description="only count what would be purged")


class DeadLetterItem(BaseModel):
    id: int
    conversion_id: int | None
    click_id: IdString | None
    publisher_id: int | None
    offer_id: int | None
    payout: MoneyString | None
    url: str | None = Field(description="the postback URL with the security token masked")
    attempts: int
    last_status: int | None
    last_error: str | None
    first_attempt_at: datetime | None
    last_attempt_at: datetime | None
    dead_at: datetime
    reason: DeadLetterReason


class AttemptItem(BaseModel):
    id: int
    sequence: int
    attempt_no: int
    trigger: AttemptTrigger
    outcome: AttemptOutcome
    url: str | None
    http_status: int | None
    duration_ms: float | None
    error_class: str | None
    error_message: str | None
    response_excerpt: str | None
    created_at: datetime


class DeadLetterDetail(DeadLetterItem):
    event_id: str | None
    sequence: int
    state: DeadLetterState
    replayed_at: datetime | None
    history: Any | None = Field(description="the history carried by the dead-lettered message")
    attempt_history: list[AttemptItem]


class DeadLetterPage(BaseModel):
    items: list[DeadLetterItem]
    next_cursor: str | None


class ReplayAccepted(BaseModel):
    id: int
    state: DeadLetterState
    sequence: int = Field(description="the new delivery sequence the replay starts")


class DryRunTotals(BaseModel):
    dry_run: bool = True
    count: int
    payout_total: MoneyString


class BulkReplayResult(BaseModel):
    dry_run: bool = False
    count: int
    failed: int = 0


class PurgeResult(BaseModel):
    count: int


class PublisherExposureItem(BaseModel):
    publisher_id: int | None
    count: int
    payout_at_risk: MoneyString
    oldest_dead_at: datetime
    newest_dead_at: datetime


class DeadLetterStats(BaseModel):
    total_count: int
    total_payout_at_risk: MoneyString
    publishers: list[PublisherExposureItem]
