"""knowledge bases: documents, chunks, full-text and vector indexes (issue 18)

The tables are the models'; the search indexes are dialect-specific and made here alone:

* SQLite: the FTS5 table `kb_chunks_fts` over `kb_chunks.text` (external content, rowid =
  chunk id, Porter stemming like PostgreSQL's `english`), kept by three triggers, and the
  table `kb_chunk_vectors` of float32 embeddings that sqlite-vec's distance functions read.
* PostgreSQL: a GIN index on `to_tsvector('english', text)`. Vectors need the pgvector
  extension, which a server may lack: the store makes their table when it finds the extension
  (flowmaestro_dagster/store/knowledge.py), so this migration runs on any server.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

SQLITE_SEARCH = (
    "CREATE VIRTUAL TABLE kb_chunks_fts USING fts5(text, content='kb_chunks', "
    "content_rowid='id', tokenize='porter unicode61 remove_diacritics 2')",
    "CREATE TRIGGER kb_chunks_fts_insert AFTER INSERT ON kb_chunks BEGIN "
    "INSERT INTO kb_chunks_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER kb_chunks_fts_delete AFTER DELETE ON kb_chunks BEGIN "
    "INSERT INTO kb_chunks_fts(kb_chunks_fts, rowid, text) VALUES ('delete', old.id, old.text); "
    "END",
    "CREATE TRIGGER kb_chunks_fts_update AFTER UPDATE OF text ON kb_chunks BEGIN "
    "INSERT INTO kb_chunks_fts(kb_chunks_fts, rowid, text) VALUES ('delete', old.id, old.text); "
    "INSERT INTO kb_chunks_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TABLE kb_chunk_vectors ("
    "chunk_id INTEGER NOT NULL PRIMARY KEY REFERENCES kb_chunks (id) ON DELETE CASCADE, "
    "knowledge_base_id VARCHAR(36) NOT NULL REFERENCES knowledge_bases (id) ON DELETE CASCADE, "
    "embedding BLOB NOT NULL)",
    "CREATE INDEX ix_kb_chunk_vectors_kb ON kb_chunk_vectors (knowledge_base_id)",
)
SQLITE_SEARCH_DROP = (
    "DROP TABLE IF EXISTS kb_chunk_vectors",
    "DROP TRIGGER IF EXISTS kb_chunks_fts_update",
    "DROP TRIGGER IF EXISTS kb_chunks_fts_delete",
    "DROP TRIGGER IF EXISTS kb_chunks_fts_insert",
    "DROP TABLE IF EXISTS kb_chunks_fts",
)
POSTGRES_SEARCH = (
    "CREATE INDEX ix_kb_chunks_tsv ON kb_chunks USING gin (to_tsvector('english', text))",
)
POSTGRES_SEARCH_DROP = (
    "DROP TABLE IF EXISTS kb_chunk_vectors",  # the store's, when pgvector was there
    "DROP INDEX IF EXISTS ix_kb_chunks_tsv",
)


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "knowledge_bases",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("owner_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("embedding_model", sa.String(length=300), nullable=True),
        sa.Column("embedding_dimensions", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_knowledge_bases_owner_id", "knowledge_bases", ["owner_id"], unique=False)
    op.create_table(
        "kb_documents",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("knowledge_base_id", sa.String(length=36), nullable=False),
        sa.Column("title", sa.String(length=500), nullable=False),
        sa.Column("source_kind", sa.String(length=10), nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("metadata", _json(), nullable=False),
        sa.Column("char_count", sa.Integer(), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("source_kind IN ('text', 'pdf', 'url')", name="ck_kb_document_kind"),
        sa.ForeignKeyConstraint(["knowledge_base_id"], ["knowledge_bases.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_kb_documents_knowledge_base_id", "kb_documents", ["knowledge_base_id"], unique=False
    )
    op.create_table(
        "kb_chunks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("document_id", sa.String(length=36), nullable=False),
        sa.Column("knowledge_base_id", sa.String(length=36), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("char_count", sa.Integer(), nullable=False),
        sa.Column("token_count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["document_id"], ["kb_documents.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["knowledge_base_id"], ["knowledge_bases.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("document_id", "ordinal", name="uq_kb_chunk_ordinal"),
    )
    op.create_index(
        "ix_kb_chunks_knowledge_base_id", "kb_chunks", ["knowledge_base_id"], unique=False
    )
    dialect = op.get_bind().dialect.name
    for statement in {"sqlite": SQLITE_SEARCH, "postgresql": POSTGRES_SEARCH}.get(dialect, ()):
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    drops = {"sqlite": SQLITE_SEARCH_DROP, "postgresql": POSTGRES_SEARCH_DROP}.get(dialect, ())
    for statement in drops:
        op.execute(statement)
    op.drop_index("ix_kb_chunks_knowledge_base_id", table_name="kb_chunks")
    op.drop_table("kb_chunks")
    op.drop_index("ix_kb_documents_knowledge_base_id", table_name="kb_documents")
    op.drop_table("kb_documents")
    op.drop_index("ix_knowledge_bases_owner_id", table_name="knowledge_bases")
    op.drop_table("knowledge_bases")
