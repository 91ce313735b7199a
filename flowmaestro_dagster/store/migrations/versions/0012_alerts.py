"""alerts: alert_rules (metric, limit, channel) and alert_states (firing/resolved per subject,
what the channel was told)

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0012"
down_revision = "0011"  # 0011_queue_controls (issue 21, queue controls)
branch_labels = None
depends_on = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "alert_rules",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("owner_id", sa.String(length=36), nullable=False),
        sa.Column("workflow_id", sa.String(length=36), nullable=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("metric", sa.String(length=30), nullable=False),
        sa.Column("window_seconds", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("min_executions", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=True),
        sa.Column("channel", _json(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "metric IN ('failure_rate', 'execution_stuck', 'queue_age', 'approval_wait')",
            name="ck_alert_rule_metric",
        ),
        sa.CheckConstraint("window_seconds > 0", name="ck_alert_rule_window"),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["workflow_id"], ["workflows.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_alert_rules_owner_id", "alert_rules", ["owner_id"], unique=False)
    op.create_index("ix_alert_rules_workflow_id", "alert_rules", ["workflow_id"], unique=False)
    op.create_table(
        "alert_states",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("rule_id", sa.String(length=36), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("workflow_id", sa.String(length=36), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("details", _json(), nullable=False),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("evaluated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("notified_status", sa.String(length=20), nullable=True),
        sa.Column("notified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("notify_attempts", sa.Integer(), nullable=False),
        sa.Column("notify_error", sa.Text(), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('firing', 'resolved')", name="ck_alert_state_status"),
        sa.ForeignKeyConstraint(["rule_id"], ["alert_rules.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("rule_id", "subject", name="uq_alert_state_subject"),
    )
    op.create_index(
        "ix_alert_states_status", "alert_states", ["status", "notified_status"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_alert_states_status", table_name="alert_states")
    op.drop_table("alert_states")
    op.drop_index("ix_alert_rules_workflow_id", table_name="alert_rules")
    op.drop_index("ix_alert_rules_owner_id", table_name="alert_rules")
    op.drop_table("alert_rules")
