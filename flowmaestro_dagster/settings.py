"""Typed settings from `FLOWMAESTRO_*` environment variables (and `.env`), read on demand."""

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLOWMAESTRO_", env_file=".env", extra="ignore", frozen=True
    )

    workflows_dir: Path = Field(
        default=PROJECT_ROOT / "workflows",
        description="Folder of workflow JSON files loaded into the code location as jobs.",
    )
    dagster_home: Path = Field(
        default=PROJECT_ROOT / "dagster_home",
        description="DAGSTER_HOME used by `flowmaestro dev` and `flowmaestro run`.",
    )
    webserver_host: str = "127.0.0.1"
    webserver_port: int = 3000


@lru_cache
def get_settings() -> Settings:
    return Settings()
