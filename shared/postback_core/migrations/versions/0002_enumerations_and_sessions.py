"""closed sets of values as CHECK constraints; server-side page sessions (web_sessions)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 20:40:00

Every column holding a value of a closed set gets a CHECK built from the
enumeration in ``postback_core.enums`` (the same constraints the models
declare). Reasons come from message headers, so rows stored before the check
are normalised first: the legacy ``permanent`` is ``permanent_http_4xx``, the
broker's own reasons are ``broker_rejected``, anything else is ``unknown``
with the original kept in ``history.original_reason``.

``web_sessions``: the pages' sessions, so signing out ends a session on the
server (a copied cookie stops working) instead of only deleting the cookie.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from postback_core.enums import (
    AttemptOutcome,
    AttemptTrigger,
    DeadLetterReason,
    DeadLetterState,
    DeliveryStatus,
    SessionKind,
    sql_values,
)

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, constraint name as in the models, column, enumeration)
CHECKS = (
    ("deliveries", "status_known", "status", DeliveryStatus),
    ("delivery_attempts", "trigger_known", "trigger", AttemptTrigger),
    ("delivery_attempts", "outcome_known", "outcome", AttemptOutcome),
    ("dead_letters", "reason_known", "reason", DeadLetterReason),
    ("dead_letters", "state_known", "state", DeadLetterState),
)
BROKER_REASONS = ("rejected", "expired", "maxlen")


def _normalise_existing_rows() -> None:
    op.get_bind().execute(
        sa.text(
            """
            UPDATE dead_letters
            SET history = COALESCE(history, '{}'::jsonb)
                          || jsonb_build_object('original_reason', reason),
                reason = CASE
                    WHEN reason = 'permanent' THEN :permanent
                    WHEN reason = ANY(:broker_reasons) THEN :broker_rejected
                    ELSE :unknown
                END
            WHERE reason <> ALL(:known)
            """
        ),
        {
            "permanent": DeadLetterReason.PERMANENT_HTTP_4XX.value,
            "broker_reasons": list(BROKER_REASONS),
            "broker_rejected": DeadLetterReason.BROKER_REJECTED.value,
            "unknown": DeadLetterReason.UNKNOWN.value,
            "known": [reason.value for reason in DeadLetterReason],
        },
    )
    op.get_bind().execute(
        sa.text(
            """
            UPDATE delivery_attempts
            SET trigger = CASE WHEN attempt_no > 1 THEN :retry ELSE :first END
            WHERE trigger <> ALL(:known)
            """
        ),
        {
            "retry": AttemptTrigger.RETRY.value,
            "first": AttemptTrigger.FIRST.value,
            "known": [trigger.value for trigger in AttemptTrigger],
        },
    )


def upgrade() -> None:
    _normalise_existing_rows()
    for table, name, column, enum in CHECKS:
        op.create_check_constraint(name, table, f"{column} IN ({sql_values(enum)})")
    op.create_table(
        "web_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("publisher_id", sa.BigInteger(), nullable=True),
        sa.Column("credential", sa.String(length=64), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            f"kind IN ({sql_values(SessionKind)})", name=op.f("ck_web_sessions_kind_known")
        ),
        sa.CheckConstraint(
            f"(kind = '{SessionKind.PUBLISHER}') = (publisher_id IS NOT NULL)",
            name=op.f("ck_web_sessions_publisher_sessions_name_their_publisher"),
        ),
        sa.ForeignKeyConstraint(
            ["publisher_id"],
            ["publishers.id"],
            name=op.f("fk_web_sessions_publisher_id_publishers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_web_sessions")),
    )
    op.create_index(op.f("ix_web_sessions_publisher_id"), "web_sessions", ["publisher_id"])
    op.create_index(op.f("ix_web_sessions_expires_at"), "web_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_web_sessions_expires_at"), table_name="web_sessions")
    op.drop_index(op.f("ix_web_sessions_publisher_id"), table_name="web_sessions")
    op.drop_table("web_sessions")
    for table, name, _column, _enum in reversed(CHECKS):
        op.drop_constraint(f"ck_{table}_{name}", table, type_="check")
