"""Settings of the HTTP API: the platform's settings (flowmaestro_dagster.settings) plus what
only the API process uses. All from `FLOWMAESTRO_*` environment variables (see .env.example).
"""

from functools import lru_cache

from pydantic import Field

from flowmaestro_dagster.settings import Settings


class ApiSettings(Settings):
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    max_request_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)


@lru_cache
def get_api_settings() -> ApiSettings:
    return ApiSettings()
