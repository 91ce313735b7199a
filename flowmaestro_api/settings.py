"""Platform settings shared by the API and the Dagster-side platform pieces (sensors, IO manager).

All from `FLOWMAESTRO_*` environment variables (see .env.example), read on demand.

Scale-out (docs/deployment.md):

* `database_url` — a `postgresql+psycopg2://` URL moves the API database *and* the Dagster
  instance storage (runs, event logs, schedules) to PostgreSQL: Dagster's tables go in the
  schema `dagster_schema` of the same database (both keep an `alembic_version` table, so they
  cannot share one schema). The default, SQLite, needs no service.
* `celery_broker_url` — set, node steps routed to Celery (`runOn: "celery"` on a node or in the
  workflow settings, else the node types in `celery_node_types`) run on `flowmaestro worker`
  processes; the rest stay on the run's threads. Redis serves as broker and result backend.
"""

import os
import re
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flowmaestro_dagster.settings import PROJECT_ROOT

DEFAULT_HOME = PROJECT_ROOT / "dagster_home"
QUEUE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")  # as ExecutionCreate.queue
_PLACEHOLDERS = {"changeme", "change-me", "secret", "password", "xxx", "todo"}


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
    public_api_url: str = Field(
        default="http://127.0.0.1:8000", description="how approvers and callers reach the API"
    )
    secret_key: SecretStr | None = Field(
        default=None, description="signs approval links and callback URLs (a file in dev)"
    )
    callback_signing_secret: SecretStr | None = Field(
        default=None, description="HMAC secret callers sign callback bodies with (a file in dev)"
    )
    callback_tolerance_seconds: int = Field(default=300, ge=10)
    wait_sleep_threshold_seconds: float = Field(default=30.0, ge=0)
    waitpoint_interval_seconds: int = Field(default=5, ge=1)
    max_request_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)

    # -- run queue: rendered into dagster.yaml (flowmaestro_dagster/instance_config.py) --------
    max_concurrent_runs: int = Field(
        default=10, ge=-1, description="runs in progress at once on the instance (-1: no limit)"
    )
    user_run_limit: int | None = Field(
        default=3,
        ge=1,
        description="runs in progress at once per user (None: no per-user limit); keeps one "
        "user's backlog from holding everyone else's runs",
    )
    queue_limits: dict[str, int] = Field(
        default_factory=lambda: {"ai-workflows": 3, "data-processing": 5},
        description="named queues and the runs each may have in progress ('default' is the "
        "queue of executions that name none; 0 pauses a queue)",
    )
    dequeue_interval_seconds: int = Field(default=1, ge=1)
    dequeue_use_threads: bool = Field(
        default=False, description="launch dequeued runs from a thread pool (faster bursts)"
    )
    dequeue_num_workers: int | None = Field(default=None, ge=1)
    pool_granularity: Literal["run", "op"] = Field(
        default="run",
        description="'run': a workflow's concurrency limit counts runs (what the builder's "
        "slider means); 'op': it counts ops of any run, runs of the workflow interleave",
    )
    run_launcher: Literal["forkserver", "default"] = Field(
        default="forkserver",
        description="'forkserver': run workers forked warm from a preloaded server (single "
        "host, ~2 s faster per run); 'default': Dagster's launcher (a fresh process per run)",
    )
    run_retries: int = Field(
        default=1, ge=0, le=10, description="re-executions of a run whose worker died"
    )
    run_max_runtime_seconds: int = Field(
        default=86_400, ge=0, description="runs still going after this are failed (0: never)"
    )

    # -- scale-out (docs/deployment.md) ----------------------------------------------------------
    dagster_schema: str = Field(
        default="dagster",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="with a PostgreSQL database_url: the schema holding the Dagster instance "
        "storage (the API's tables stay in the URL's default schema)",
    )
    celery_broker_url: str | None = Field(
        default=None,
        description="Redis URL of the Celery broker (redis://host:6379/0); set, node steps "
        "routed to Celery run on `flowmaestro worker` processes. Unset: every step runs on "
        "the run's threads",
    )
    celery_backend_url: str | None = Field(
        default=None, description="Celery result backend (default: the broker URL)"
    )
    celery_queue: str = Field(
        default="flowmaestro",
        pattern=r"^[A-Za-z0-9_.-]{1,100}$",
        description="the Celery queue node steps are sent to and workers consume",
    )
    celery_node_types: list[str] = Field(
        default_factory=lambda: ["code", "llm"],
        description="node types sent to Celery when neither the node nor the workflow says "
        "`runOn` (canonical type names, docs/node-types.md)",
    )
    celery_check_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="how often a run checks that the worker running its step is alive (and, "
        "while it waits in the queue, that some worker consumes the queue)",
    )

    @field_validator("celery_broker_url", "celery_backend_url", mode="before")
    @classmethod
    def _redis_only(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        # Celery's default transport is AMQP: a URL that is not Redis would hang runs.
        if isinstance(value, str) and not value.startswith(("redis://", "rediss://")):
            raise ValueError("a Celery broker/backend must be a redis:// or rediss:// URL")
        return value

    @field_validator("user_run_limit", "dequeue_num_workers", mode="before")
    @classmethod
    def _none_from_env(cls, value: object) -> object:
        # An environment variable cannot be None: an empty value or `none` means unset.
        if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
            return None
        return value

    @field_validator("queue_limits")
    @classmethod
    def _queue_names(cls, value: dict[str, int]) -> dict[str, int]:
        for name, limit in value.items():
            if not QUEUE_NAME.fullmatch(name):
                raise ValueError(f"queue name {name!r} must match {QUEUE_NAME.pattern}")
            if limit < 0:
                raise ValueError(f"queue {name!r}: the limit must be 0 or more")
        return value

    @model_validator(mode="after")
    def _fair_user_limit(self) -> "ApiSettings":
        # A user allowed every slot could keep all other users waiting behind their backlog.
        if (
            self.user_run_limit is not None
            and self.max_concurrent_runs != -1
            and self.user_run_limit >= self.max_concurrent_runs
            and self.max_concurrent_runs > 1
        ):
            raise ValueError(
                "user_run_limit must be lower than max_concurrent_runs, or one user can take "
                "every slot and keep the others waiting"
            )
        return self

    @field_validator("database_url")
    @classmethod
    def _explicit_driver(cls, value: str) -> str:
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which is not installed.
        if value.startswith(("postgresql://", "postgres://")):
            return "postgresql+psycopg2://" + value.split("://", 1)[1]
        return value

    @field_validator("secret_key", "callback_signing_secret")
    @classmethod
    def _real_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().lower() in _PLACEHOLDERS:
            raise ValueError("set a real secret, not a placeholder")
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("secrets must be at least 16 characters")
        return value

    def secret(self, name: str) -> str:
        """A configured secret, else one generated once and kept in DAGSTER_HOME (development)."""
        value: SecretStr | None = getattr(self, name)
        if value is not None:
            return value.get_secret_value()
        home = Path(os.environ.get("DAGSTER_HOME") or DEFAULT_HOME)
        path = home / f".{name.replace('_', '-')}"
        if not path.exists():
            home.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text().strip()

    @property
    def postgres(self) -> bool:
        return self.database_url.startswith("postgresql")

    @property
    def celery_enabled(self) -> bool:
        return self.celery_broker_url is not None

    @property
    def celery_backend(self) -> str | None:
        return self.celery_backend_url or self.celery_broker_url

    @property
    def database_path(self) -> Path | None:
        if self.database_url.startswith("sqlite:///"):
            return Path(self.database_url.removeprefix("sqlite:///"))
        return None


@lru_cache
def get_api_settings() -> ApiSettings:
    return ApiSettings()
