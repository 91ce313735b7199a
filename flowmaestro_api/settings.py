"""Settings of the HTTP API: the platform's settings (flowmaestro_dagster.settings) plus what
only the API process uses. All from `FLOWMAESTRO_*` environment variables (see .env.example).
"""

import json
from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from flowmaestro_dagster.settings import Settings


class ApiSettings(Settings):
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    max_request_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    api_threads: int = Field(
        default=8,
        ge=1,
        description="threads of one API worker process serving requests at once (more wait "
        "their turn on the event loop): with Python's one interpreter lock, more threads "
        "contending cost more CPU per request, not more throughput (docs/deployment.md)",
    )
    api_dagster_threads: int = Field(
        default=8,
        ge=1,
        description="threads of one API worker process that wait on Dagster's code-location "
        "reloads (deploy, archive): apart from the request threads, so deploys cannot take them",
    )
    api_key_cache_seconds: float = Field(
        default=10.0,
        ge=0,
        description="how long one API worker process remembers an authenticated API key's "
        "user, so its requests read neither from the database (0: every request reads them); "
        "a key revoked in the database keeps working in a process that knew it for this long",
    )
    hook_rate_limit: str = Field(
        default="20/second;600/minute",
        description="deliveries one webhook trigger accepts ('limits' notation, windows "
        "separated by ';'; empty or 'none': unlimited); more are 429 (docs/webhooks.md)",
    )
    hook_rate_limit_storage: str = Field(
        default="memory://",
        description="where hook rate limits count: memory:// (this API process) or "
        "redis://host:port/db (shared by every API process)",
    )

    operator_emails: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="emails of the users whose API keys may run operator actions (pause and "
        "resume a queue, set a user's run limit or the priority of a user's queued executions); "
        "comma-separated or a JSON list",
    )

    @field_validator("operator_emails", mode="before")
    @classmethod
    def _emails(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    def is_operator(self, email: str) -> bool:
        return email.lower() in {e.lower() for e in self.operator_emails}

    @field_validator("hook_rate_limit")
    @classmethod
    def _parses(cls, value: str) -> str:
        from flowmaestro_api.ratelimit import parse_limits

        parse_limits(value)  # a ValueError names what is wrong
        return value


@lru_cache
def get_api_settings() -> ApiSettings:
    return ApiSettings()
