"""queue controls: paused queues and per-user run limits set by an operator at runtime

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "paused_queues",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("paused_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("paused_by", sa.String(length=320), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "user_run_limits",
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("run_limit", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=320), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id"),
    )


def downgrade() -> None:
    op.drop_table("user_run_limits")
    op.drop_table("paused_queues")
