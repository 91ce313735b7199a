"""Platform settings shared by the API and the Dagster-side platform pieces (sensors, IO manager).

All from `FLOWMAESTRO_*` environment variables (see .env.example), read on demand.
"""

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flowmaestro_dagster.settings import PROJECT_ROOT

DEFAULT_HOME = PROJECT_ROOT / "dagster_home"


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLOWMAESTRO_", env_file=".env", extra="ignore", frozen=True
    )

    database_url: str = Field(
        default=f"sqlite:///{DEFAULT_HOME / 'flowmaestro.db'}",
        description="The platform database (workflows, executions, node outputs, waitpoints).",
    )
    dagster_graphql_url: str = "http://127.0.0.1:3000/graphql"
    dagster_ui_url: str = "http://127.0.0.1:3000"
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    code_location_shards: int = Field(default=1, ge=1, le=64)
    idempotency_ttl_seconds: int = Field(default=86_400, ge=60)
    launch_lease_seconds: int = Field(default=60, ge=5)
    launch_on_submit: bool = Field(
        default=True,
        description="launch right after the submission commits; off: the reconciler launches",
    )
    reconcile_after_seconds: float = Field(default=10.0, ge=0)
    reconciler_interval_seconds: int = Field(default=10, ge=1)
    graphql_timeout_seconds: float = Field(default=30.0, gt=0)
    max_request_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)

    @field_validator("database_url")
    @classmethod
    def _explicit_driver(cls, value: str) -> str:
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which is not installed.
        if value.startswith(("postgresql://", "postgres://")):
            return "postgresql+psycopg2://" + value.split("://", 1)[1]
        return value

    @property
    def database_path(self) -> Path | None:
        if self.database_url.startswith("sqlite:///"):
            return Path(self.database_url.removeprefix("sqlite:///"))
        return None


@lru_cache
def get_api_settings() -> ApiSettings:
    return ApiSettings()
