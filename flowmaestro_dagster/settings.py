"""Typed settings from `FLOWMAESTRO_*` environment variables (and `.env`), read on demand.

Nested sections use `__`: `FLOWMAESTRO_LLM__PROVIDERS__OPENAI__BASE_URL=http://localhost:8000/v1`.
Dict-valued settings also take JSON: `FLOWMAESTRO_DATABASES='{"crm": "postgresql+psycopg2://..."}'`.
Secrets are `SecretStr` (never printed) or named environment variables (`*_env` fields).
"""

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
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
    """Limits of the code node's sandboxes (docs/node-types.md, code).

    A node's `timeout` (ms) and `memory` (MB) are capped by `max_timeout_ms` / `max_memory_mb`.
    """

    max_timeout_ms: int = Field(default=60_000, gt=0)
    default_memory_mb: int = Field(default=128, gt=0)
    max_memory_mb: int = Field(default=512, gt=0)
    max_output_chars: int = Field(default=100_000, gt=0, description="stdout/stderr kept, each")
    max_result_chars: int = Field(default=10_000_000, gt=0, description="JSON of a value")
    python_enabled: bool = Field(default=True, description="run Python snippets at all")
    python_require_isolation: bool = Field(
        default=False,
        description="refuse Python snippets unless the host gives a network namespace and "
        "Landlock (the audit hook and resource limits always apply)",
    )
    python_max_file_mb: int = Field(default=16, gt=0, description="largest file a snippet writes")
    python_max_files: int = Field(default=64, ge=0, description="files a snippet may create")
    scratch_dir: Path | None = Field(
        default=None, description="where per-run scratch directories go (the system temp dir)"
    )


def _check_database_url(url: str) -> str:
    scheme = url.split("://", 1)[0].lower()
    if scheme.startswith("postgres") and scheme != "postgresql+psycopg2":
        raise ValueError(
            f"PostgreSQL URLs must name the psycopg2 driver: postgresql+psycopg2://... "
            f"(got {scheme}://)"
        )
    if "://" not in url:
        raise ValueError("not a SQLAlchemy URL (dialect+driver://user:password@host/database)")
    return url


class DatabaseConnection(BaseModel):
    """A named database for database nodes: a SQLAlchemy URL, inline or from a variable.

    `FLOWMAESTRO_DATABASES='{"crm": "postgresql+psycopg2://app@db/crm"}'` (a bare URL is the
    `url`), or `FLOWMAESTRO_DATABASES__CRM__URL_ENV=CRM_DATABASE_URL` (the variable holding the
    URL), optionally with `password_env` (the variable holding the password). The URL is
    checked when a node uses it (a settings error would print it, password and all).
    """

    url: SecretStr | None = None
    url_env: str | None = Field(default=None, description="env var holding the URL")
    password_env: str | None = Field(default=None, description="env var holding the password")
    pool_size: int = Field(default=5, ge=1)
    max_overflow: int = Field(default=5, ge=0)
    max_rows: int = Field(default=10_000, ge=1, description="rows a node returns at most")

    @model_validator(mode="before")
    @classmethod
    def _bare_url(cls, value: Any) -> Any:
        if isinstance(value, str | SecretStr):
            return {"url": value}
        return value

    def resolved_url(self) -> str:
        """The URL (read from the environment now); raises ValueError when there is none."""
        if self.url is not None:
            url = self.url.get_secret_value()
        elif self.url_env:
            url = os.environ.get(self.url_env, "")
            if not url:
                raise ValueError(f"the environment variable {self.url_env} is not set")
        else:
            raise ValueError("the connection has neither url nor url_env")
        return _check_database_url(url)

    def resolved_password(self) -> str | None:
        if self.password_env:
            return os.environ.get(self.password_env) or None
        return None


class ConnectionSettings(BaseModel):
    """A named connection for connectors: a Slack webhook, an SMTP server, a webhook endpoint.

    Secrets are `SecretStr` fields or the name of a variable that holds them (`<field>_env`):
    `FLOWMAESTRO_CONNECTIONS__SLACK__URL_ENV=SLACK_WEBHOOK_URL`. A node picks a connection by
    `connectionId`, else the one named like its provider; `connector` says which connector
    serves it when that is not the provider (a `gmail` connection served by `smtp`). Extra keys
    are kept for connectors a deployment adds: `secret("api_key")` reads `api_key`/`api_key_env`.
    """

    model_config = ConfigDict(extra="allow")

    connector: str | None = Field(default=None, description="connector serving this connection")
    url: SecretStr | None = Field(default=None, description="webhook URL (Slack, a webhook)")
    url_env: str | None = None
    host: str | None = Field(default=None, description="SMTP host")
    port: int | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_env: str | None = None
    security: Literal["starttls", "ssl", "none"] = Field(
        default="starttls", description="SMTP: STARTTLS on the plain port, implicit TLS, or none"
    )
    from_address: str | None = Field(default=None, description="SMTP: default sender")
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="webhook: headers sent with every request"
    )
    signing_secret: SecretStr | None = None
    signing_secret_env: str | None = None
    timeout_s: float = Field(default=30.0, gt=0)

    def secret(self, name: str) -> str | None:
        """A secret from field `name`, else from the variable named by `<name>_env`."""
        value = getattr(self, name, None)
        if value is None and self.model_extra:
            value = self.model_extra.get(name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value:
            return str(value)
        variable = getattr(self, f"{name}_env", None)
        if variable is None and self.model_extra:
            variable = self.model_extra.get(f"{name}_env")
        if variable:
            return os.environ.get(str(variable)) or None
        return None


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
    databases: dict[str, DatabaseConnection] = Field(
        default_factory=dict, description="named SQLAlchemy URLs for database nodes"
    )
    connections: dict[str, ConnectionSettings] = Field(
        default_factory=dict, description="named connector connections (Slack, SMTP, ...)"
    )


@lru_cache
def get_settings() -> Settings:
    return Settings()
