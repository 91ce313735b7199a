"""The storage section: one PostgreSQL setting moves the Dagster instance next to the API's tables.

The rendering is checked as data; the PostgreSQL test builds a real instance from it in a fresh
database (dropped afterwards) and runs a job on it.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from dagster import DagsterInstance, job, op
from dagster_postgres import PostgresRunStorage

from flowmaestro_dagster.orchestration.instance_config import (
    STORAGE_MODULE,
    instance_config,
    prepare_storage,
    render_instance_yaml,
    storage_url,
)
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.store.db import migrate
from flowmaestro_dagster.store.models import Base
from tests.services import fresh_pg_database


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_sqlite_keeps_the_embedded_default_no_storage_section() -> None:
    assert "storage" not in instance_config(settings())
    assert "storage" not in instance_config(settings(database_url="sqlite:////tmp/x.db"))


def test_with_its_home_sqlite_gets_the_embedded_storage_there(tmp_path: Path) -> None:
    """Written into a home (`flowmaestro dev`, test stacks), the same files under it, through
    the storage that checks its schema once (engines/storage.py)."""
    storage = instance_config(settings(), home=tmp_path)["storage"]["custom"]
    assert storage == {
        "module": STORAGE_MODULE,
        "class": "SqliteStorage",
        "config": {"base_dir": str(tmp_path.resolve())},
    }
    postgres = settings(database_url="postgresql://fm@db/flows")
    assert (
        instance_config(postgres, home=tmp_path)["storage"]["custom"]["class"] == "PostgresStorage"
    )


def test_a_postgres_database_url_renders_postgres_storage_in_the_dagster_schema() -> None:
    config = instance_config(settings(database_url="postgresql://fm:s3cret@db:5432/flows"))
    storage = config["storage"]["custom"]
    assert (storage["module"], storage["class"]) == (STORAGE_MODULE, "PostgresStorage")
    url = storage["config"]["postgres_url"]
    # psycopg2 explicitly (SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3), the password
    # kept, Dagster's tables in their own schema
    assert url == "postgresql+psycopg2://fm:s3cret@db:5432/flows?options=-csearch_path%3Ddagster"
    assert list(config)[-1] == "storage"  # appended to SECTIONS


def test_the_schema_is_a_setting_and_existing_query_parameters_are_kept() -> None:
    url = storage_url(
        settings(
            database_url="postgresql+psycopg2://fm@db/flows?sslmode=require",
            dagster_schema="orchestration",
        )
    )
    assert url.endswith("?options=-csearch_path%3Dorchestration&sslmode=require")
    with pytest.raises(ValueError, match="dagster_schema"):
        settings(dagster_schema="bad-name; drop")


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_pg_database() as url:
        yield url


@op
def answer() -> int:
    return 42


@job
def tiny() -> None:
    answer()


@pytest.mark.postgres
def test_a_dagster_instance_from_the_rendering_runs_on_postgres_beside_the_api(
    database: str, tmp_path: Path
) -> None:
    platform = settings(database_url=database)
    migrate(platform.database_url)
    prepare_storage(platform)
    prepare_storage(platform)  # idempotent
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(render_instance_yaml(platform))
    with DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        result = tiny.execute_in_process(instance=instance)
        assert result.success
        assert instance.get_run_by_id(result.run_id) is not None
    engine = sa.create_engine(platform.database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            inspector = sa.inspect(connection)
            api_tables = set(inspector.get_table_names())  # the URL's default schema: public
            dagster_tables = set(inspector.get_table_names(schema="dagster"))
            runs = connection.execute(sa.text("SELECT run_id FROM dagster.runs")).scalars().all()
            revisions = {
                schema: connection.execute(
                    sa.text(f"SELECT version_num FROM {schema}.alembic_version")
                ).scalar_one()
                for schema in ("public", "dagster")
            }
    finally:
        engine.dispose()
    assert {table.name for table in Base.metadata.sorted_tables} <= api_tables
    assert {"runs", "event_logs", "jobs", "kvs"} <= dagster_tables
    # The one table name both sides use: why Dagster gets a schema of its own.
    assert api_tables & dagster_tables == {"alembic_version"}
    assert revisions["public"] != revisions["dagster"]
    assert runs == [result.run_id]
    assert yaml.safe_load(render_instance_yaml(platform))["storage"]["custom"]["config"]
