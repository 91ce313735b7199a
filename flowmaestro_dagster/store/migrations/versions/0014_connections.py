"""connections: encrypted provider connections and OAuth2 state (issue 19)

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "connections",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("owner_id", sa.String(length=36), nullable=False),
        sa.Column("provider", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("auth_type", sa.String(length=20), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("encrypted_credentials", sa.Text(), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("credential_keys", _json(), nullable=False),
        sa.Column("base_url", sa.String(length=2048), nullable=True),
        sa.Column("scopes", _json(), nullable=False),
        sa.Column("account_label", sa.String(length=200), nullable=True),
        sa.Column("token_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "auth_type IN ('credentials', 'oauth2')", name="ck_connection_auth_type"
        ),
        sa.CheckConstraint("status IN ('active', 'needs_reauth')", name="ck_connection_status"),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("owner_id", "name", name="uq_connection_name"),
    )
    op.create_index(
        "ix_connections_owner_provider", "connections", ["owner_id", "provider"], unique=False
    )
    # One default per owner and provider: a partial unique index (both backends have them).
    op.create_index(
        "uq_connection_default",
        "connections",
        ["owner_id", "provider"],
        unique=True,
        sqlite_where=sa.text("is_default"),
        postgresql_where=sa.text("is_default"),
    )


def downgrade() -> None:
    op.drop_index("uq_connection_default", table_name="connections")
    op.drop_index("ix_connections_owner_provider", table_name="connections")
    op.drop_table("connections")
