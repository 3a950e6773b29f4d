"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-27 04:43:18.678503
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Daily partitions of clicks: clicks_YYYYMMDD holds [day, day + 1) UTC. The
# gateway calls ensure_click_partitions() at start and hourly, and
# drop_click_partitions_before() for retention. clicks_default catches any
# row outside the prepared days so a click is never refused.
CLICK_PARTITION_FUNCTIONS = (
    """
CREATE OR REPLACE FUNCTION ensure_click_partitions(days_back integer, days_ahead integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    day date;
    created integer := 0;
    part text;
BEGIN
    FOR day IN
        SELECT generate_series(
            (now() AT TIME ZONE 'UTC')::date - days_back,
            (now() AT TIME ZONE 'UTC')::date + days_ahead,
            interval '1 day')::date
    LOOP
        part := 'clicks_' || to_char(day, 'YYYYMMDD');
        IF to_regclass(part) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF clicks FOR VALUES FROM (%L) TO (%L)',
                part,
                (day::timestamp AT TIME ZONE 'UTC'),
                ((day + 1)::timestamp AT TIME ZONE 'UTC'));
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END $$
""",
    """
CREATE OR REPLACE FUNCTION drop_click_partitions_before(cutoff date)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped integer := 0;
BEGIN
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname = 'clicks' AND c.relname ~ '^clicks_[0-9]{8}$'
          AND to_date(substr(c.relname, 8), 'YYYYMMDD') < cutoff
    LOOP
        EXECUTE format('DROP TABLE %I', part.relname);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END $$
""",
)

# Wakes the outbox relay as soon as a transaction that wrote events commits
# (NOTIFY is delivered at commit); one notification per statement, not per row.
OUTBOX_NOTIFY = (
    """
CREATE OR REPLACE FUNCTION notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END $$
""",
    """
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
FOR EACH STATEMENT EXECUTE FUNCTION notify_outbox()
""",
)


def upgrade() -> None:
    op.create_table(
        "advertisers",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("api_key_hash", sa.String(length=64), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_advertisers")),
        sa.UniqueConstraint("api_key_hash", name=op.f("uq_advertisers_api_key_hash")),
    )
    op.create_table(
        "clicks",
        sa.Column("click_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("external_id", sa.String(length=256), nullable=True),
        sa.Column("publisher_id", sa.BigInteger(), nullable=False),
        sa.Column("smartlink_id", sa.BigInteger(), nullable=False),
        sa.Column("offer_id", sa.BigInteger(), nullable=True),
        sa.Column("ip", postgresql.INET(), nullable=True),
        sa.Column("country", sa.String(length=2), nullable=True),
        sa.Column("os", sa.String(length=50), nullable=True),
        sa.Column("device", sa.String(length=20), nullable=True),
        sa.Column("user_agent", sa.Text(), nullable=True),
        sa.Column("sub1", sa.String(length=256), nullable=True),
        sa.Column("sub2", sa.String(length=256), nullable=True),
        sa.Column("sub3", sa.String(length=256), nullable=True),
        sa.Column("sub4", sa.String(length=256), nullable=True),
        sa.Column("sub5", sa.String(length=256), nullable=True),
        sa.Column("is_bot", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("method", sa.String(length=8), server_default=sa.text("'GET'"), nullable=False),
        sa.PrimaryKeyConstraint("click_id", "created_at", name=op.f("pk_clicks")),
        postgresql_partition_by="RANGE (created_at)",
    )
    op.create_table(
        "cluster_secrets",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_cluster_secrets")),
    )
    op.create_table(
        "conversions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("click_id", sa.BigInteger(), nullable=False),
        sa.Column("txid", sa.String(length=128), server_default=sa.text("''"), nullable=False),
        sa.Column("event_id", sa.UUID(), nullable=False),
        sa.Column("advertiser_id", sa.BigInteger(), nullable=False),
        sa.Column("publisher_id", sa.BigInteger(), nullable=False),
        sa.Column("offer_id", sa.BigInteger(), nullable=True),
        sa.Column("smartlink_id", sa.BigInteger(), nullable=True),
        sa.Column("payout", sa.Numeric(precision=12, scale=4), nullable=False),
        sa.Column(
            "status", sa.String(length=20), server_default=sa.text("'approved'"), nullable=False
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("payout >= 0", name=op.f("ck_conversions_payout_not_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversions")),
        sa.UniqueConstraint("click_id", "txid", name="uq_conversions_click_id_txid"),
        sa.UniqueConstraint("event_id", name=op.f("uq_conversions_event_id")),
    )
    op.create_index(
        op.f("ix_conversions_advertiser_id"), "conversions", ["advertiser_id"], unique=False
    )
    op.create_index(
        op.f("ix_conversions_publisher_id"), "conversions", ["publisher_id"], unique=False
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("event_key", sa.String(length=200), nullable=False),
        sa.Column("event_id", sa.UUID(), nullable=True),
        sa.Column("sequence", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("conversion_id", sa.BigInteger(), nullable=True),
        sa.Column("click_id", sa.BigInteger(), nullable=True),
        sa.Column("publisher_id", sa.BigInteger(), nullable=True),
        sa.Column("offer_id", sa.BigInteger(), nullable=True),
        sa.Column("payout", sa.Numeric(precision=12, scale=4), nullable=True),
        sa.Column("url_masked", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("reason", sa.String(length=50), nullable=False),
        sa.Column("first_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "dead_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("state", sa.String(length=20), server_default=sa.text("'dead'"), nullable=False),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("payload", sa.LargeBinary(), nullable=True),
        sa.Column("history", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
        sa.UniqueConstraint("event_key", name="uq_dead_letters_event_key"),
    )
    op.create_index(
        op.f("ix_dead_letters_conversion_id"), "dead_letters", ["conversion_id"], unique=False
    )
    op.create_index(
        "ix_dead_letters_open_dead_at",
        "dead_letters",
        [sa.literal_column("dead_at DESC"), sa.literal_column("id DESC")],
        unique=False,
        postgresql_where=sa.text("state = 'dead'"),
    )
    op.create_index(
        "ix_dead_letters_open_publisher",
        "dead_letters",
        ["publisher_id", sa.literal_column("dead_at DESC"), sa.literal_column("id DESC")],
        unique=False,
        postgresql_where=sa.text("state = 'dead'"),
    )
    op.create_table(
        "deliveries",
        sa.Column("conversion_id", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.UUID(), nullable=False),
        sa.Column("publisher_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("sequence", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("first_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("conversion_id", name=op.f("pk_deliveries")),
    )
    op.create_index(
        op.f("ix_deliveries_publisher_id"), "deliveries", ["publisher_id"], unique=False
    )
    op.create_table(
        "delivery_attempts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("conversion_id", sa.BigInteger(), nullable=True),
        sa.Column("event_id", sa.UUID(), nullable=True),
        sa.Column("publisher_id", sa.BigInteger(), nullable=False),
        sa.Column("sequence", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("attempt_no", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(length=10), nullable=False),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.Column("url_masked", sa.Text(), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("duration_ms", sa.Numeric(precision=10, scale=2), nullable=True),
        sa.Column("error_class", sa.String(length=100), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("response_excerpt", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_attempts")),
    )
    op.create_index(
        op.f("ix_delivery_attempts_conversion_id"),
        "delivery_attempts",
        ["conversion_id"],
        unique=False,
    )
    op.create_index(
        "ix_delivery_attempts_publisher_id_id",
        "delivery_attempts",
        ["publisher_id", sa.literal_column("id DESC")],
        unique=False,
    )
    op.create_table(
        "id_nodes",
        sa.Column("node", sa.Integer(), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("leased_until", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("node", name=op.f("pk_id_nodes")),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("event_id", sa.UUID(), nullable=False),
        sa.Column("exchange", sa.String(length=200), nullable=False),
        sa.Column("routing_key", sa.String(length=200), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("publish_attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_outbox_event_id")),
    )
    op.create_index(
        "ix_outbox_unpublished",
        "outbox",
        ["id"],
        unique=False,
        postgresql_where=sa.text("published_at IS NULL"),
    )
    op.create_table(
        "publishers",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("api_key_hash", sa.String(length=64), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_publishers")),
        sa.UniqueConstraint("api_key_hash", name=op.f("uq_publishers_api_key_hash")),
    )
    op.create_table(
        "offers",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("advertiser_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("url_template", sa.Text(), nullable=False),
        sa.Column("payout", sa.Numeric(precision=12, scale=4), nullable=False),
        sa.Column("countries", postgresql.ARRAY(sa.String(length=2)), nullable=True),
        sa.Column("os", postgresql.ARRAY(sa.String(length=50)), nullable=True),
        sa.Column("devices", postgresql.ARRAY(sa.String(length=20)), nullable=True),
        sa.Column("weight", sa.Integer(), server_default=sa.text("100"), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
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
        sa.CheckConstraint("payout >= 0", name=op.f("ck_offers_payout_not_negative")),
        sa.CheckConstraint("weight >= 0", name=op.f("ck_offers_weight_not_negative")),
        sa.ForeignKeyConstraint(
            ["advertiser_id"], ["advertisers.id"], name=op.f("fk_offers_advertiser_id_advertisers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_offers")),
    )
    op.create_index(op.f("ix_offers_advertiser_id"), "offers", ["advertiser_id"], unique=False)
    op.create_index(op.f("ix_offers_updated_at"), "offers", ["updated_at"], unique=False)
    op.create_table(
        "postback_settings",
        sa.Column("publisher_id", sa.BigInteger(), nullable=False),
        sa.Column("url_template", sa.Text(), nullable=False),
        sa.Column("security_token", sa.String(length=200), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["publisher_id"],
            ["publishers.id"],
            name=op.f("fk_postback_settings_publisher_id_publishers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("publisher_id", name=op.f("pk_postback_settings")),
    )
    op.create_table(
        "smartlinks",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("publisher_id", sa.BigInteger(), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("fallback_url", sa.Text(), nullable=True),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
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
        sa.ForeignKeyConstraint(
            ["publisher_id"], ["publishers.id"], name=op.f("fk_smartlinks_publisher_id_publishers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_smartlinks")),
        sa.UniqueConstraint("code", name=op.f("uq_smartlinks_code")),
    )
    op.create_index(
        op.f("ix_smartlinks_publisher_id"), "smartlinks", ["publisher_id"], unique=False
    )
    op.create_index(op.f("ix_smartlinks_updated_at"), "smartlinks", ["updated_at"], unique=False)
    op.create_table(
        "smartlink_offers",
        sa.Column("smartlink_id", sa.BigInteger(), nullable=False),
        sa.Column("offer_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["offer_id"], ["offers.id"], name=op.f("fk_smartlink_offers_offer_id_offers")
        ),
        sa.ForeignKeyConstraint(
            ["smartlink_id"],
            ["smartlinks.id"],
            name=op.f("fk_smartlink_offers_smartlink_id_smartlinks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("smartlink_id", "offer_id", name=op.f("pk_smartlink_offers")),
    )
    op.create_index(
        op.f("ix_smartlink_offers_offer_id"), "smartlink_offers", ["offer_id"], unique=False
    )
    for statement in (*CLICK_PARTITION_FUNCTIONS, *OUTBOX_NOTIFY):
        op.execute(statement)
    op.execute("CREATE TABLE clicks_default PARTITION OF clicks DEFAULT")
    op.execute("SELECT ensure_click_partitions(1, 3)")


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS outbox_notify ON outbox")
    op.execute("DROP FUNCTION IF EXISTS notify_outbox()")
    op.execute("DROP FUNCTION IF EXISTS ensure_click_partitions(integer, integer)")
    op.execute("DROP FUNCTION IF EXISTS drop_click_partitions_before(date)")
    op.drop_index(op.f("ix_smartlink_offers_offer_id"), table_name="smartlink_offers")
    op.drop_table("smartlink_offers")
    op.drop_index(op.f("ix_smartlinks_updated_at"), table_name="smartlinks")
    op.drop_index(op.f("ix_smartlinks_publisher_id"), table_name="smartlinks")
    op.drop_table("smartlinks")
    op.drop_table("postback_settings")
    op.drop_index(op.f("ix_offers_updated_at"), table_name="offers")
    op.drop_index(op.f("ix_offers_advertiser_id"), table_name="offers")
    op.drop_table("offers")
    op.drop_table("publishers")
    op.drop_index(
        "ix_outbox_unpublished",
        table_name="outbox",
        postgresql_where=sa.text("published_at IS NULL"),
    )
    op.drop_table("outbox")
    op.drop_table("id_nodes")
    op.drop_index("ix_delivery_attempts_publisher_id_id", table_name="delivery_attempts")
    op.drop_index(op.f("ix_delivery_attempts_conversion_id"), table_name="delivery_attempts")
    op.drop_table("delivery_attempts")
    op.drop_index(op.f("ix_deliveries_publisher_id"), table_name="deliveries")
    op.drop_table("deliveries")
    op.drop_index(
        "ix_dead_letters_open_publisher",
        table_name="dead_letters",
        postgresql_where=sa.text("state = 'dead'"),
    )
    op.drop_index(
        "ix_dead_letters_open_dead_at",
        table_name="dead_letters",
        postgresql_where=sa.text("state = 'dead'"),
    )
    op.drop_index(op.f("ix_dead_letters_conversion_id"), table_name="dead_letters")
    op.drop_table("dead_letters")
    op.drop_index(op.f("ix_conversions_publisher_id"), table_name="conversions")
    op.drop_index(op.f("ix_conversions_advertiser_id"), table_name="conversions")
    op.drop_table("conversions")
    op.drop_table("cluster_secrets")
    op.drop_table("clicks")
    op.drop_table("advertisers")
