"""Typed settings from `FLOWMAESTRO_*` environment variables (and `.env`), read on demand.

Nested sections use `__`: `FLOWMAESTRO_LLM__PROVIDERS__OPENAI__BASE_URL=http://localhost:8000/v1`.
Dict-valued settings also take JSON: `FLOWMAESTRO_DATABASES='{"crm": "postgresql+psycopg2://..."}'`.
Secrets are `SecretStr` (never printed) or named environment variables (`*_env` fields).
"""

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class LLMProvider(BaseModel):
    """An OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, LM Studio, a gateway).

    `FLOWMAESTRO_LLM__PROVIDERS__<NAME>__BASE_URL`, `__API_KEY` or `__API_KEY_ENV` (the name of
    the variable that holds the key, so the key itself stays out of FlowMaestro's settings).
    """

    base_url: str | None = Field(
        default=None, description="OpenAI-compatible API root, e.g. http://localhost:11434/v1"
    )
    api_key: SecretStr | None = None
    api_key_env: str | None = Field(default=None, description="env var holding the API key")
    default_model: str | None = Field(
        default=None, description="model for nodes that name none (routers often do not)"
    )
    models: dict[str, str] = Field(
        default_factory=dict,
        description="model names in workflows → model names this endpoint serves",
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="extra request headers (gateways, org ids)"
    )
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = Field(
        default="max_tokens",
        description="request field for maxTokens (OpenAI reasoning models want the second)",
    )
    timeout_s: float = Field(default=60.0, gt=0)

    def resolved_api_key(self) -> str | None:
        """The key from `api_key`, else from the variable `api_key_env` names (read now)."""
        if self.api_key is not None and self.api_key.get_secret_value():
            return self.api_key.get_secret_value()
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        return None

    def model_for(self, requested: str | None) -> str | None:
        """The model to ask for: the node's (through `models`), else `default_model`."""
        if requested:
            return self.models.get(requested, requested)
        return self.default_model


class LLMSettings(BaseModel):
    providers: dict[str, LLMProvider] = Field(default_factory=dict)
    default_provider: str = Field(
        default="openai", description="provider of nodes that name none (routers often do not)"
    )

    def provider(self, name: str) -> LLMProvider | None:
        """A provider by name: case-insensitive, `-` and `_` alike (env names cannot hold `-`)."""
        wanted = _provider_key(name)
        for key, provider in self.providers.items():
            if _provider_key(key) == wanted:
                return provider
        return None


def _provider_key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


class HttpSettings(BaseModel):
    """Outbound HTTP from nodes (http node, webhooks): the SSRF guard's allowances and limits.

    `allowed_hosts` entries are hostnames (`api.internal`), wildcards (`*.corp.internal`), IP
    addresses or CIDR networks (`10.1.0.0/16`); they open anything, even metadata addresses.
    """

    allow_loopback: bool = False
    allow_private: bool = Field(
        default=False, description="10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7"
    )
    allowed_hosts: list[str] = Field(default_factory=list)
    timeout_s: float = Field(default=30.0, gt=0, description="for nodes that set no timeout")
    max_timeout_s: float = Field(default=300.0, gt=0, description="cap on a node's timeout")
    max_response_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    max_redirects: int = Field(default=10, ge=0)


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
