"""Every table of the platform.

The gateway owns publishers, advertisers, offers, smartlinks, clicks,
conversions and the outbox; the dispatcher owns deliveries, attempts and dead
letters. They share one database so the operator and publisher views can join
them. Relationships are ``lazy="raise"``: every load is explicit.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, CIDR, INET, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.sql.functions import FunctionElement

from postback_core.db.base import Base
from postback_core.enums import (
    AttemptOutcome,
    AttemptTrigger,
    ConversionActor,
    ConversionStatus,
    DeadLetterReason,
    DeadLetterState,
    DeliveryStatus,
    SessionKind,
    sql_values,
)

# Money: 12 digits, 4 after the point (payouts are USD amounts such as 0.50).
Money = Numeric(12, 4)
MAX_PAYOUT = Decimal("10000")


def _now() -> FunctionElement[Any]:
    return func.now()


class Publisher(Base):
    __tablename__ = "publishers"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    api_key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # After a key rotation the old key keeps working until previous_key_expires_at.
    previous_api_key_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    previous_key_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    is_active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())

    postback_settings: Mapped[PostbackSettings | None] = relationship(
        back_populates="publisher", lazy="raise", uselist=False
    )


class PostbackSettings(Base):
    """A publisher's postback URL template and security token (no row = no postback)."""

    __tablename__ = "postback_settings"

    publisher_id: Mapped[int] = mapped_column(
        ForeignKey("publishers.id", ondelete="CASCADE"), primary_key=True
    )
    url_template: Mapped[str] = mapped_column(Text)
    security_token: Mapped[str | None] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now(), onupdate=_now()
    )

    publisher: Mapped[Publisher] = relationship(back_populates="postback_settings", lazy="raise")


class Advertiser(Base):
    __tablename__ = "advertisers"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    api_key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    previous_api_key_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    previous_key_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # NULL: conversions from any address; else only from these networks.
    allowed_ips: Mapped[list[str] | None] = mapped_column(ARRAY(CIDR))
    is_active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class Offer(Base):
    __tablename__ = "offers"
    __table_args__ = (
        CheckConstraint("payout >= 0", name="payout_not_negative"),
        CheckConstraint("weight >= 0", name="weight_not_negative"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    advertiser_id: Mapped[int] = mapped_column(ForeignKey("advertisers.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    url_template: Mapped[str] = mapped_column(Text)
    payout: Mapped[Decimal] = mapped_column(Money)
    # NULL = any. Countries are ISO-2 upper case; os as the UA parser names
    # families (e.g. "Android", "iOS", "Windows"); devices desktop/mobile/tablet/other.
    countries: Mapped[list[str] | None] = mapped_column(ARRAY(String(2)))
    os: Mapped[list[str] | None] = mapped_column(ARRAY(String(50)))
    devices: Mapped[list[str] | None] = mapped_column(ARRAY(String(20)))
    weight: Mapped[int] = mapped_column(Integer, server_default=text("100"))
    # A conversion for a click older than this is stored rejected.
    attribution_window_days: Mapped[int] = mapped_column(Integer, server_default=text("30"))
    is_active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now(), onupdate=_now(), index=True
    )


DEFAULT_GOAL = "default"


class Goal(Base):
    """A conversion event an offer pays for (install, purchase, ...).

    Every offer has one named ``default`` carrying the offer's payout (a
    trigger creates it and follows the offer's payout, see migration 0003). A goal
    pays either a fixed ``payout`` or ``revenue_share_percent`` of the amount
    the advertiser reports. ``hold_days``: 0 approves at once, N holds the
    conversion pending for N days, NULL holds it until someone decides.
    """

    __tablename__ = "goals"
    __table_args__ = (
        UniqueConstraint("offer_id", "name", name="uq_goals_offer_id_name"),
        CheckConstraint(
            "(payout IS NULL) <> (revenue_share_percent IS NULL)", name="one_payout_rule"
        ),
        CheckConstraint("payout >= 0", name="payout_not_negative"),
        CheckConstraint(
            "revenue_share_percent >= 0 AND revenue_share_percent <= 100",
            name="revenue_share_percent_range",
        ),
        CheckConstraint("hold_days >= 0", name="hold_days_not_negative"),
        CheckConstraint("daily_cap >= 0", name="daily_cap_not_negative"),
        CheckConstraint("total_cap >= 0", name="total_cap_not_negative"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    offer_id: Mapped[int] = mapped_column(ForeignKey("offers.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    payout: Mapped[Decimal | None] = mapped_column(Money)
    revenue_share_percent: Mapped[Decimal | None] = mapped_column(Numeric(7, 4))
    hold_days: Mapped[int | None] = mapped_column(Integer, server_default=text("0"))
    daily_cap: Mapped[int | None] = mapped_column(Integer)
    total_cap: Mapped[int | None] = mapped_column(Integer)
    allow_multiple: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now(), onupdate=_now()
    )


# goal_counters.day for the all-time row of a goal (the others are UTC days).
TOTAL_COUNTER_DAY = "-infinity"


class GoalCounter(Base):
    """Conversions of a capped goal that count against its cap (not rejected), per UTC day.

    The row ``day = '-infinity'`` is the all-time total. Incremented with
    ``count < cap`` in the same transaction as the conversion insert, so the
    row lock makes caps exact under concurrency.
    """

    __tablename__ = "goal_counters"
    __table_args__ = (CheckConstraint("count >= 0", name="count_not_negative"),)

    goal_id: Mapped[int] = mapped_column(
        ForeignKey("goals.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    count: Mapped[int] = mapped_column(Integer, server_default=text("0"))


class SmartLink(Base):
    __tablename__ = "smartlinks"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    publisher_id: Mapped[int] = mapped_column(ForeignKey("publishers.id"), index=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    fallback_url: Mapped[str | None] = mapped_column(Text)
    is_active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now(), onupdate=_now(), index=True
    )

    offers: Mapped[list[SmartLinkOffer]] = relationship(lazy="raise")


class SmartLinkOffer(Base):
    __tablename__ = "smartlink_offers"

    smartlink_id: Mapped[int] = mapped_column(
        ForeignKey("smartlinks.id", ondelete="CASCADE"), primary_key=True
    )
    offer_id: Mapped[int] = mapped_column(ForeignKey("offers.id"), primary_key=True, index=True)


class Click(Base):
    """One SmartLink visit. Range-partitioned by day on ``created_at`` (see migration).

    ``click_id`` embeds its creation millisecond, so a lookup by id computes the
    day and touches a single partition.
    """

    __tablename__ = "clicks"
    __table_args__ = (
        PrimaryKeyConstraint("click_id", "created_at"),
        {"postgresql_partition_by": "RANGE (created_at)"},
    )

    click_id: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    external_id: Mapped[str | None] = mapped_column(String(256))
    publisher_id: Mapped[int] = mapped_column(BigInteger)
    smartlink_id: Mapped[int] = mapped_column(BigInteger)
    offer_id: Mapped[int | None] = mapped_column(BigInteger)  # NULL: sent to fallback_url
    ip: Mapped[str | None] = mapped_column(INET)
    country: Mapped[str | None] = mapped_column(String(2))
    os: Mapped[str | None] = mapped_column(String(50))
    device: Mapped[str | None] = mapped_column(String(20))
    user_agent: Mapped[str | None] = mapped_column(Text)
    sub1: Mapped[str | None] = mapped_column(String(256))
    sub2: Mapped[str | None] = mapped_column(String(256))
    sub3: Mapped[str | None] = mapped_column(String(256))
    sub4: Mapped[str | None] = mapped_column(String(256))
    sub5: Mapped[str | None] = mapped_column(String(256))
    is_bot: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    method: Mapped[str] = mapped_column(String(8), server_default=text("'GET'"))


class Conversion(Base):
    """One reported conversion of one goal.

    ``(click_id, goal_id, txid)`` is unique (idempotency); for a goal that
    does not allow multiple conversions, ``once_per_click`` makes
    ``(click_id, goal_id)`` unique as well. ``sequence`` counts the
    conversion's events (1 = created), so consumers can keep their order.
    """

    __tablename__ = "conversions"
    __table_args__ = (
        UniqueConstraint("click_id", "goal_id", "txid", name="uq_conversions_click_goal_txid"),
        Index(
            "uq_conversions_once_per_click",
            "click_id",
            "goal_id",
            unique=True,
            postgresql_where=text("once_per_click"),
        ),
        Index(
            "ix_conversions_hold_until",
            "hold_until",
            postgresql_where=text("status = 'pending' AND hold_until IS NOT NULL"),
        ),
        Index("ix_conversions_advertiser_id_id", "advertiser_id", "id"),
        CheckConstraint("payout >= 0", name="payout_not_negative"),
        CheckConstraint(f"status IN ({sql_values(ConversionStatus)})", name="status_known"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    click_id: Mapped[int] = mapped_column(BigInteger)
    goal_id: Mapped[int] = mapped_column(BigInteger)
    # '' when the advertiser sent none: one conversion per click and goal unless a txid differs.
    txid: Mapped[str] = mapped_column(String(128), server_default=text("''"))
    once_per_click: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True)
    advertiser_id: Mapped[int] = mapped_column(BigInteger)
    publisher_id: Mapped[int] = mapped_column(BigInteger, index=True)
    offer_id: Mapped[int | None] = mapped_column(BigInteger)
    smartlink_id: Mapped[int | None] = mapped_column(BigInteger)
    payout: Mapped[Decimal] = mapped_column(Money)
    amount: Mapped[Decimal | None] = mapped_column(Numeric(14, 4))  # as the advertiser reported
    status: Mapped[str] = mapped_column(String(20), server_default=text("'approved'"))
    reject_reason: Mapped[str | None] = mapped_column(String(200))
    hold_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sequence: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    status_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ConversionStatusChange(Base):
    """A conversion's status history: one row per event (``sequence`` 1 = created)."""

    __tablename__ = "conversion_status_history"
    __table_args__ = (
        CheckConstraint(f"status IN ({sql_values(ConversionStatus)})", name="status_known"),
        CheckConstraint(
            f"previous_status IN ({sql_values(ConversionStatus)})", name="previous_status_known"
        ),
        CheckConstraint(f"actor IN ({sql_values(ConversionActor)})", name="actor_known"),
    )

    conversion_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sequence: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(20))
    previous_status: Mapped[str | None] = mapped_column(String(20))
    actor: Mapped[str] = mapped_column(String(20))  # ConversionActor
    actor_id: Mapped[int | None] = mapped_column(BigInteger)  # the advertiser, when one
    reason: Mapped[str | None] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class OutboxMessage(Base):
    """An event waiting to be published; written in the same transaction as its cause."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index(
            "ix_outbox_unpublished",
            "id",
            postgresql_where=text("published_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True)
    exchange: Mapped[str] = mapped_column(String(200))
    routing_key: Mapped[str] = mapped_column(String(200))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    publish_attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)


class Delivery(Base):
    """The dispatcher's state per conversion: idempotency and the attempt limit.

    ``sequence`` is the replay generation: an explicit replay starts a new
    sequence with ``attempts`` back at zero.
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        CheckConstraint(f"status IN ({sql_values(DeliveryStatus)})", name="status_known"),
    )

    conversion_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    publisher_id: Mapped[int] = mapped_column(BigInteger, index=True)
    status: Mapped[str] = mapped_column(String(20))  # DeliveryStatus
    sequence: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    first_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now(), onupdate=_now()
    )


class DeliveryAttempt(Base):
    """One HTTP attempt (or skip) — the attempt log. URLs are stored token-masked."""

    __tablename__ = "delivery_attempts"
    __table_args__ = (
        Index("ix_delivery_attempts_publisher_id_id", "publisher_id", text("id DESC")),
        CheckConstraint(f"trigger IN ({sql_values(AttemptTrigger)})", name="trigger_known"),
        CheckConstraint(f"outcome IN ({sql_values(AttemptOutcome)})", name="outcome_known"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    conversion_id: Mapped[int | None] = mapped_column(BigInteger, index=True)  # NULL: test
    event_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    publisher_id: Mapped[int] = mapped_column(BigInteger)
    sequence: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    attempt_no: Mapped[int] = mapped_column(Integer)
    trigger: Mapped[str] = mapped_column(String(10))  # AttemptTrigger
    outcome: Mapped[str] = mapped_column(String(20))  # AttemptOutcome
    url_masked: Mapped[str | None] = mapped_column(Text)
    http_status: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[float | None] = mapped_column(Numeric(10, 2))
    error_class: Mapped[str | None] = mapped_column(String(100))
    error_message: Mapped[str | None] = mapped_column(Text)
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class DeadLetter(Base):
    """A postback that gave up (or a message that could not be read), kept for operators."""

    __tablename__ = "dead_letters"
    __table_args__ = (
        # One row per (event, replay generation): archiving the same DLQ message
        # twice (redelivery) can't duplicate it.
        UniqueConstraint("event_key", name="uq_dead_letters_event_key"),
        Index(
            "ix_dead_letters_open_dead_at",
            text("dead_at DESC"),
            text("id DESC"),
            postgresql_where=text(f"state = '{DeadLetterState.DEAD}'"),
        ),
        Index(
            "ix_dead_letters_open_publisher",
            "publisher_id",
            text("dead_at DESC"),
            text("id DESC"),
            postgresql_where=text(f"state = '{DeadLetterState.DEAD}'"),
        ),
        CheckConstraint(f"reason IN ({sql_values(DeadLetterReason)})", name="reason_known"),
        CheckConstraint(f"state IN ({sql_values(DeadLetterState)})", name="state_known"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    event_key: Mapped[str] = mapped_column(String(200))  # "<event_id>:<sequence>" or msg hash
    event_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    sequence: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    conversion_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    click_id: Mapped[int | None] = mapped_column(BigInteger)
    publisher_id: Mapped[int | None] = mapped_column(BigInteger)
    offer_id: Mapped[int | None] = mapped_column(BigInteger)
    payout: Mapped[Decimal | None] = mapped_column(Money)
    url_masked: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(String(50))  # DeadLetterReason
    first_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    dead_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    state: Mapped[str] = mapped_column(String(20), server_default=text("'dead'"))  # DeadLetterState
    replayed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    payload: Mapped[bytes | None] = mapped_column(LargeBinary)  # the original event body
    history: Mapped[dict[str, object] | None] = mapped_column(JSONB)


class WebSession(Base):
    """A signed-in page session. The cookie holds a random id; only its SHA-256 is stored.

    Checked on every request, so signing out (``revoked_at``) ends it at once,
    even for a copy of the cookie. ``credential`` fingerprints what was used to
    sign in (the publisher's key hash, the admin token): rotating it ends the session.
    """

    __tablename__ = "web_sessions"
    __table_args__ = (
        CheckConstraint(f"kind IN ({sql_values(SessionKind)})", name="kind_known"),
        CheckConstraint(
            f"(kind = '{SessionKind.PUBLISHER}') = (publisher_id IS NOT NULL)",
            name="publisher_sessions_name_their_publisher",
        ),
    )

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))  # SessionKind
    publisher_id: Mapped[int | None] = mapped_column(
        ForeignKey("publishers.id", ondelete="CASCADE"), index=True
    )
    credential: Mapped[str] = mapped_column(String(64))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class IdNode(Base):
    """Leases of click-id node numbers, so every gateway process has its own."""

    __tablename__ = "id_nodes"

    node: Mapped[int] = mapped_column(Integer, primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    leased_until: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ClusterSecret(Base):
    """Secrets every process of the cluster must share (e.g. the click-id permutation key).

    Generated by the database on first use, so no configuration is needed.
    """

    __tablename__ = "cluster_secrets"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
