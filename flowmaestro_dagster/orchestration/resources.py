"""The node services of the platform's code locations: settings plus the database stores."""

from collections.abc import Mapping
from functools import partial
from typing import Any

from flowmaestro_dagster.adapter.attempts import ATTEMPTS_SERVICE
from flowmaestro_dagster.adapter.resources import FlowMaestroResource
from flowmaestro_dagster.control.oauth import refresh_connection
from flowmaestro_dagster.control.waitpoints import start_child_execution
from flowmaestro_dagster.settings import get_settings
from flowmaestro_dagster.store.attempts import DatabaseAttemptStore
from flowmaestro_dagster.store.checkpoints import DatabaseCheckpointStore
from flowmaestro_dagster.store.connections import ConnectionCipher, ConnectionStore
from flowmaestro_dagster.store.knowledge import DatabaseKnowledgeBaseStore
from flowmaestro_dagster.store.waitpoints import DatabaseWaitpointStore


class PlatformResource(FlowMaestroResource):
    """Runs of API executions: waitpoints, checkpoints and node attempts live in the platform
    database."""

    def services(self) -> Mapping[str, Any]:
        settings = get_settings()
        return {
            "settings": settings,
            "waitpoints": DatabaseWaitpointStore(
                settings.database_url,
                sleep_threshold_seconds=settings.wait_sleep_threshold_seconds,
                start_child=partial(
                    start_child_execution,
                    database_url=settings.database_url,
                    shards=settings.code_location_shards,
                ),
            ),
            "checkpoints": DatabaseCheckpointStore(settings.database_url),
            ATTEMPTS_SERVICE: DatabaseAttemptStore(settings.database_url),
            # knowledgeBaseQuery nodes search the run's user's knowledge bases here.
            "knowledge_bases": DatabaseKnowledgeBaseStore(settings.database_url, settings),
            # The run owner's provider connections (store/connections.py), OAuth2 refreshes
            # by control/oauth.py.
            "connections": ConnectionStore(
                settings.database_url,
                cipher=partial(ConnectionCipher.from_settings, settings),
                refresher=partial(refresh_connection, settings=settings),
            ),
        }
