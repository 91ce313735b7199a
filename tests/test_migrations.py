"""The migrations build the schema the models declare: a column, index or constraint added to
one and not the other shows here, not as a failure on someone's upgraded database."""

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from flowmaestro_dagster.store.db import migrate
from flowmaestro_dagster.store.models import Base

# Search indexes migration 0013 makes beside the models (SQLite's FTS5 table and its shadow
# tables, the sqlite-vec vectors table): dialect-specific, so no model declares them.
KNOWLEDGE_SEARCH_TABLES = frozenset(
    {
        "kb_chunks_fts",
        "kb_chunks_fts_data",
        "kb_chunks_fts_idx",
        "kb_chunks_fts_docsize",
        "kb_chunks_fts_config",
        "kb_chunk_vectors",
    }
)


def _modelled(name: str | None, kind: str, parents: dict[str, str | None]) -> bool:
    if kind == "table":
        return name not in KNOWLEDGE_SEARCH_TABLES
    return parents.get("table_name") not in KNOWLEDGE_SEARCH_TABLES


def test_the_migrated_schema_is_the_models_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/platform.sqlite"
    migrate(url)
    engine = create_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": False, "include_name": _modelled}
        )
        differences = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert differences == []
