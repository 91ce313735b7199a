"""analytics facts: executions.duration_ms / facts_recorded_at, execution_node_stats, and the
covering indexes the workflow dashboard reads (issue 20)

Existing rows are backfilled here, so the dashboard counts them at once: a finished, launched
execution's duration is its `finished_at` (its last run's end, as synced) minus its
`created_at`; a settled execution's node numbers are rolled up from its node attempts, the same
query `control/executions.py` runs when an execution settles. Executions still under way keep
`facts_recorded_at` NULL: analytics read their attempts until their status is next synced.

Revision ID: 0015
Revises: 0014
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# control/executions.py SETTLED and TERMINAL (a migration does not import the application).
SETTLED = "('succeeded', 'failed', 'cancelled', 'waiting', 'paused')"
TERMINAL = "('succeeded', 'failed', 'cancelled')"

DURATION_SQL = {
    # Stored as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC): whole seconds plus the microseconds, exact.
    "sqlite": (
        "ROUND((CAST(strftime('%s', finished_at) AS INTEGER)"
        " - CAST(strftime('%s', created_at) AS INTEGER)) * 1000.0"
        " + (CAST(substr(finished_at, 21) AS INTEGER)"
        " - CAST(substr(created_at, 21) AS INTEGER)) / 1000.0, 3)"
    ),
    "postgresql": (
        "ROUND((EXTRACT(EPOCH FROM (finished_at - created_at)) * 1000)::numeric, 3)"
        "::double precision"
    ),
}

NODE_STATS_SQL = f"""
INSERT INTO execution_node_stats
    (execution_id, node_id, workflow_id, created_at, errors, failures, retries)
SELECT a.execution_id, a.node_id, e.workflow_id, e.created_at,
       COUNT(*),
       SUM(CASE WHEN a.status = 'failed' AND NOT EXISTS (
               SELECT 1 FROM node_attempts b
               WHERE b.execution_id = a.execution_id AND b.node_id = a.node_id
                 AND b.iteration = a.iteration
                 AND (b.started_at > a.started_at
                      OR (b.started_at = a.started_at AND b.attempt > a.attempt))
           ) THEN 1 ELSE 0 END),
       SUM(CASE WHEN a.status = 'retrying' THEN 1 ELSE 0 END)
FROM node_attempts a JOIN executions e ON e.id = a.execution_id
WHERE a.status IN ('retrying', 'failed', 'handled') AND e.status IN {SETTLED}
GROUP BY a.execution_id, a.node_id, e.workflow_id, e.created_at
"""


def upgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.add_column(sa.Column("duration_ms", sa.Float(), nullable=True))
        batch.add_column(sa.Column("facts_recorded_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "execution_node_stats",
        sa.Column("execution_id", sa.String(length=36), nullable=False),
        sa.Column("node_id", sa.String(length=300), nullable=False),
        sa.Column("workflow_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("retries", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["execution_id"], ["executions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("execution_id", "node_id"),
    )
    op.create_index(
        "ix_execution_node_stats_range",
        "execution_node_stats",
        ["workflow_id", "created_at", "node_id", "errors", "failures", "retries"],
    )
    op.create_index(
        "ix_executions_analytics",
        "executions",
        ["workflow_id", "created_at", "status", "duration_ms", "replays"],
    )
    bind = op.get_bind()
    duration = DURATION_SQL["postgresql" if bind.dialect.name == "postgresql" else "sqlite"]
    op.execute(
        f"UPDATE executions SET duration_ms = {duration} WHERE status IN {TERMINAL}"
        " AND run_id IS NOT NULL AND finished_at IS NOT NULL"
    )
    op.execute(NODE_STATS_SQL)
    now = sa.bindparam("now", datetime.now(UTC), type_=sa.DateTime(timezone=True))
    bind.execute(
        sa.text(
            f"UPDATE executions SET facts_recorded_at = :now WHERE status IN {SETTLED}"
        ).bindparams(now)
    )
    # Made after the backfill: it holds only the executions still under way.
    op.create_index(
        "ix_executions_unsettled",
        "executions",
        ["workflow_id", "created_at"],
        sqlite_where=sa.text("facts_recorded_at IS NULL"),
        postgresql_where=sa.text("facts_recorded_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_executions_unsettled", table_name="executions")
    op.drop_index("ix_executions_analytics", table_name="executions")
    op.drop_index("ix_execution_node_stats_range", table_name="execution_node_stats")
    op.drop_table("execution_node_stats")
    with op.batch_alter_table("executions") as batch:
        batch.drop_column("facts_recorded_at")
        batch.drop_column("duration_ms")
