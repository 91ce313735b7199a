"""tests/api's database fixtures, shared: each test gets a fresh SQLite and PostgreSQL database
copied from a migrated template."""

from tests.api.conftest import database_url, db_template

__all__ = ["database_url", "db_template"]
