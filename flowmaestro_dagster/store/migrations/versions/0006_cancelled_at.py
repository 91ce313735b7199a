"""executions.cancelled_at: a cancel is a claim that every launch, retry and resume re-checks

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.add_column(sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True))
    # Executions cancelled before this revision stay cancelled.
    op.execute(
        "UPDATE executions SET cancelled_at = COALESCE(finished_at, created_at) "
        "WHERE status = 'cancelled'"
    )


def downgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.drop_column("cancelled_at")
