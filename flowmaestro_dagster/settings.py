"""Typed settings from `FLOWMAESTRO_*` environment variables (and `.env`), read on demand.

Nested sections use `__`: `FLOWMAESTRO_LLM__PROVIDERS__OPENAI__BASE_URL=http://localhost:8000/v1`.
Dict-valued settings also take JSON: `FLOWMAESTRO_DATABASES='{"crm": "postgresql+psycopg2://..."}'`.
Secrets are `SecretStr` (never printed) or named environment variables (`*_env` fields).
"""

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class LLMProvider(BaseModel):
    """An OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, LM Studio, a gateway)."""

    base_url: str | None = None
    api_key: SecretStr | None = None
    api_key_env: str | None = Field(default=None, description="env var holding the API key")
    default_model: str | None = None
    timeout_s: float = 60.0


class LLMSettings(BaseModel):
    providers: dict[str, LLMProvider] = Field(default_factory=dict)


class HttpSettings(BaseModel):
    """Outbound HTTP from nodes (http node, webhooks): the SSRF guard's allowances."""

    allow_loopback: bool = False
    allow_private: bool = False
    allowed_hosts: list[str] = Field(default_factory=list)
    timeout_s: float = 30.0
    max_response_bytes: int = 10 * 1024 * 1024


class CodeSettings(BaseModel):
    """Limits of the code node's sandboxes."""

    max_timeout_ms: int = 60_000
    default_memory_mb: int = 128
    max_memory_mb: int = 512


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLOWMAESTRO_",
        env_file=".env",
        env_nested_delimiter="__",
        extra="ignore",
        frozen=True,
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

    llm: LLMSettings = Field(default_factory=LLMSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    code: CodeSettings = Field(default_factory=CodeSettings)
    databases: dict[str, str] = Field(
        default_factory=dict, description="named SQLAlchemy URLs for database nodes"
    )
    connections: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="named connector connections (Slack, SMTP, ...)"
    )


@lru_cache
def get_settings() -> Settings:
    return Settings()
