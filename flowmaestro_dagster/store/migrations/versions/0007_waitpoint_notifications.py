"""waitpoints.notifications: approver notifications, claimed once and recorded per attempt

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL: not yet claimed by the waitpoint sensor (approvals parked before this revision
    # get their notifications sent on the next tick, if their node asked for any).
    with op.batch_alter_table("waitpoints") as batch:
        batch.add_column(
            sa.Column(
                "notifications",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("waitpoints") as batch:
        batch.drop_column("notifications")
