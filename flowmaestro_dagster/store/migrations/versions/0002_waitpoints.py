"""waitpoints and decisions

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "waitpoints",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("execution_id", sa.String(length=36), nullable=False),
        sa.Column("node_id", sa.String(length=300), nullable=False),
        sa.Column("iteration", sa.String(length=100), nullable=False),
        sa.Column("step_key", sa.String(length=400), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("on_expiry", sa.String(length=20), nullable=True),
        sa.Column("token_hash", sa.String(length=64), nullable=True),
        sa.Column("link_token_hash", sa.String(length=64), nullable=True),
        sa.Column("child_execution_id", sa.String(length=36), nullable=True),
        sa.Column(
            "spec",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "resolution",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resume_token", sa.String(length=36), nullable=True),
        sa.Column("resume_claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resume_run_id", sa.String(length=64), nullable=True),
        sa.Column("resumed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["execution_id"], ["executions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("execution_id", "node_id", "iteration", name="uq_waitpoint_node"),
        sa.UniqueConstraint("link_token_hash"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index(
        op.f("ix_waitpoints_child_execution_id"), "waitpoints", ["child_execution_id"], unique=False
    )
    op.create_index(
        "ix_waitpoints_execution", "waitpoints", ["execution_id", "status"], unique=False
    )
    op.create_index("ix_waitpoints_status_due", "waitpoints", ["status", "due_at"], unique=False)
    op.create_index(
        "ix_waitpoints_status_expires", "waitpoints", ["status", "expires_at"], unique=False
    )
    op.create_table(
        "decisions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("waitpoint_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=True),
        sa.Column("via", sa.String(length=20), nullable=False),
        sa.Column("decision", sa.String(length=20), nullable=False),
        sa.Column(
            "value",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
        ),
        sa.ForeignKeyConstraint(["waitpoint_id"], ["waitpoints.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("waitpoint_id"),
    )


def downgrade() -> None:
    op.drop_table("decisions")
    op.drop_index("ix_waitpoints_status_expires", table_name="waitpoints")
    op.drop_index("ix_waitpoints_status_due", table_name="waitpoints")
    op.drop_index("ix_waitpoints_execution", table_name="waitpoints")
    op.drop_index(op.f("ix_waitpoints_child_execution_id"), table_name="waitpoints")
    op.drop_table("waitpoints")
