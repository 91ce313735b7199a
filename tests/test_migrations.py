"""The migrations build the schema the models declare: a column, index or constraint added to
one and not the other shows here, not as a failure on someone's upgraded database."""

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from flowmaestro_dagster.store.db import migrate
from flowmaestro_dagster.store.models import Base


def test_the_migrated_schema_is_the_models_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/platform.sqlite"
    migrate(url)
    engine = create_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": False})
        differences = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert differences == []
