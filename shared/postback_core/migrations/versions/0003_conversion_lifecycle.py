"""conversion lifecycle: goals, statuses and history, caps, attribution window, key rotation

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 20:30:00

Every existing offer gets its ``default`` goal (the offer's payout, several
conversions per click told apart by txid: today's behaviour), and every
existing conversion is attached to it and gets its creation in the history.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# The values as they are today (a migration must not change when the enums grow).
STATUSES = "'pending', 'approved', 'rejected'"
ACTORS = "'advertiser', 'operator', 'hold_expiry', 'rules'"

# Every offer has its default goal, paying the offer's payout: the database keeps it
# so (offers created by any path, e.g. raw SQL, get one; a payout change follows).
DEFAULT_GOAL_TRIGGER = (
    """
CREATE OR REPLACE FUNCTION offer_default_goal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO goals (offer_id, name, payout, hold_days, allow_multiple)
        VALUES (NEW.id, 'default', NEW.payout, 0, true)
        ON CONFLICT (offer_id, name) DO NOTHING;
    ELSIF NEW.payout IS DISTINCT FROM OLD.payout THEN
        UPDATE goals SET payout = NEW.payout, revenue_share_percent = NULL,
                         updated_at = clock_timestamp()
        WHERE offer_id = NEW.id AND name = 'default';
    END IF;
    RETURN NULL;
END $$
""",
    """
CREATE TRIGGER offers_default_goal AFTER INSERT OR UPDATE OF payout ON offers
FOR EACH ROW EXECUTE FUNCTION offer_default_goal()
""",
)

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("publishers", "advertisers"):
        op.add_column(table, sa.Column("previous_api_key_hash", sa.String(64), nullable=True))
        op.add_column(
            table,
            sa.Column("previous_key_expires_at", sa.DateTime(timezone=True), nullable=True),
        )
        op.create_index(
            f"ix_{table}_previous_api_key_hash", table, ["previous_api_key_hash"], unique=False
        )
    op.add_column(
        "advertisers", sa.Column("allowed_ips", postgresql.ARRAY(postgresql.CIDR()), nullable=True)
    )
    op.add_column(
        "offers",
        sa.Column(
            "attribution_window_days", sa.Integer(), server_default=sa.text("30"), nullable=False
        ),
    )

    op.create_table(
        "goals",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("offer_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("payout", sa.Numeric(12, 4), nullable=True),
        sa.Column("revenue_share_percent", sa.Numeric(7, 4), nullable=True),
        sa.Column("hold_days", sa.Integer(), server_default=sa.text("0"), nullable=True),
        sa.Column("daily_cap", sa.Integer(), nullable=True),
        sa.Column("total_cap", sa.Integer(), nullable=True),
        sa.Column("allow_multiple", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "(payout IS NULL) <> (revenue_share_percent IS NULL)",
            name=op.f("ck_goals_one_payout_rule"),
        ),
        sa.CheckConstraint("payout >= 0", name=op.f("ck_goals_payout_not_negative")),
        sa.CheckConstraint(
            "revenue_share_percent >= 0 AND revenue_share_percent <= 100",
            name=op.f("ck_goals_revenue_share_percent_range"),
        ),
        sa.CheckConstraint("hold_days >= 0", name=op.f("ck_goals_hold_days_not_negative")),
        sa.CheckConstraint("daily_cap >= 0", name=op.f("ck_goals_daily_cap_not_negative")),
        sa.CheckConstraint("total_cap >= 0", name=op.f("ck_goals_total_cap_not_negative")),
        sa.ForeignKeyConstraint(
            ["offer_id"], ["offers.id"], name=op.f("fk_goals_offer_id_offers"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_goals")),
        sa.UniqueConstraint("offer_id", "name", name="uq_goals_offer_id_name"),
    )
    op.create_table(
        "goal_counters",
        sa.Column("goal_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.CheckConstraint("count >= 0", name=op.f("ck_goal_counters_count_not_negative")),
        sa.ForeignKeyConstraint(
            ["goal_id"],
            ["goals.id"],
            name=op.f("fk_goal_counters_goal_id_goals"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("goal_id", "day", name=op.f("pk_goal_counters")),
    )
    op.create_table(
        "conversion_status_history",
        sa.Column("conversion_id", sa.BigInteger(), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("previous_status", sa.String(20), nullable=True),
        sa.Column("actor", sa.String(20), nullable=False),
        sa.Column("actor_id", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.String(200), nullable=True),
        sa.Column(
            "at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.CheckConstraint(
            f"status IN ({STATUSES})", name=op.f("ck_conversion_status_history_status_known")
        ),
        sa.CheckConstraint(
            f"previous_status IN ({STATUSES})",
            name=op.f("ck_conversion_status_history_previous_status_known"),
        ),
        sa.CheckConstraint(
            f"actor IN ({ACTORS})", name=op.f("ck_conversion_status_history_actor_known")
        ),
        sa.PrimaryKeyConstraint(
            "conversion_id", "sequence", name=op.f("pk_conversion_status_history")
        ),
    )

    op.execute(
        "INSERT INTO goals (offer_id, name, payout, hold_days, allow_multiple) "
        "SELECT id, 'default', payout, 0, true FROM offers"
    )
    for statement in DEFAULT_GOAL_TRIGGER:
        op.execute(statement)

    op.add_column("conversions", sa.Column("goal_id", sa.BigInteger(), nullable=True))
    op.add_column(
        "conversions",
        sa.Column("once_per_click", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.add_column("conversions", sa.Column("amount", sa.Numeric(14, 4), nullable=True))
    op.add_column("conversions", sa.Column("reject_reason", sa.String(200), nullable=True))
    op.add_column("conversions", sa.Column("hold_until", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "conversions",
        sa.Column("sequence", sa.Integer(), server_default=sa.text("1"), nullable=False),
    )
    op.add_column(
        "conversions", sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.execute(
        "UPDATE conversions c SET goal_id = g.id FROM goals g "
        "WHERE g.offer_id = c.offer_id AND g.name = 'default'"
    )
    # A conversion without an offer can't exist today; 0 keeps the column NOT NULL regardless.
    op.execute("UPDATE conversions SET goal_id = 0 WHERE goal_id IS NULL")
    op.alter_column("conversions", "goal_id", nullable=False)
    op.execute(
        "INSERT INTO conversion_status_history "
        "(conversion_id, sequence, status, previous_status, actor, actor_id, at) "
        "SELECT id, 1, status, NULL, 'advertiser', advertiser_id, created_at FROM conversions"
    )
    op.drop_constraint("uq_conversions_click_id_txid", "conversions", type_="unique")
    op.create_unique_constraint(
        "uq_conversions_click_goal_txid", "conversions", ["click_id", "goal_id", "txid"]
    )
    op.create_index(
        "uq_conversions_once_per_click",
        "conversions",
        ["click_id", "goal_id"],
        unique=True,
        postgresql_where=sa.text("once_per_click"),
    )
    op.create_index(
        "ix_conversions_hold_until",
        "conversions",
        ["hold_until"],
        postgresql_where=sa.text("status = 'pending' AND hold_until IS NOT NULL"),
    )
    op.drop_index("ix_conversions_advertiser_id", table_name="conversions")
    op.create_index("ix_conversions_advertiser_id_id", "conversions", ["advertiser_id", "id"])
    op.create_check_constraint(
        op.f("ck_conversions_status_known"),
        "conversions",
        f"status IN ({STATUSES})",
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_conversions_status_known"), "conversions", type_="check")
    op.drop_index("ix_conversions_advertiser_id_id", table_name="conversions")
    op.create_index("ix_conversions_advertiser_id", "conversions", ["advertiser_id"])
    op.drop_index("ix_conversions_hold_until", table_name="conversions")
    op.drop_index("uq_conversions_once_per_click", table_name="conversions")
    op.drop_constraint("uq_conversions_click_goal_txid", "conversions", type_="unique")
    op.create_unique_constraint("uq_conversions_click_id_txid", "conversions", ["click_id", "txid"])
    for column in (
        "status_changed_at",
        "sequence",
        "hold_until",
        "reject_reason",
        "amount",
        "once_per_click",
        "goal_id",
    ):
        op.drop_column("conversions", column)
    op.drop_table("conversion_status_history")
    op.execute("DROP TRIGGER IF EXISTS offers_default_goal ON offers")
    op.execute("DROP FUNCTION IF EXISTS offer_default_goal()")
    op.drop_table("goal_counters")
    op.drop_table("goals")
    op.drop_column("offers", "attribution_window_days")
    op.drop_column("advertisers", "allowed_ips")
    for table in ("publishers", "advertisers"):
        op.drop_index(f"ix_{table}_previous_api_key_hash", table_name=table)
        op.drop_column(table, "previous_key_expires_at")
        op.drop_column(table, "previous_api_key_hash")
