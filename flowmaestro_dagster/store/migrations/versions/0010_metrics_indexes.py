"""indexes for the scrape-time metrics: executions by status / queue / priority (queue depth
and age), node attempts by status and error class (retries and errors by class)

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_executions_status_queue", "executions", ["status", "queue", "priority", "created_at"]
    )
    op.create_index("ix_node_attempts_errors", "node_attempts", ["status", "error_class"])


def downgrade() -> None:
    op.drop_index("ix_node_attempts_errors", table_name="node_attempts")
    op.drop_index("ix_executions_status_queue", table_name="executions")
