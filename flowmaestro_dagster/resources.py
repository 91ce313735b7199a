"""Dagster resources the node ops require."""

from collections.abc import Mapping
from typing import Any

from dagster import (
    ConfigurableResource,
    Field,
    InitResourceContext,
    Permissive,
    ResourceDefinition,
    resource,
)

from flowmaestro_dagster.settings import Settings, get_settings


@resource(
    config_schema={
        "inputs": Field(
            Permissive(),
            is_required=False,
            default_value={},
            description="The execution's inputs (what input and trigger nodes read).",
        )
    },
    description="The inputs of one workflow execution, set per run.",
)
def workflow_inputs_resource(init_context: InitResourceContext) -> dict[str, Any]:
    return dict(init_context.resource_config["inputs"])


class FlowMaestroResource(ConfigurableResource):
    """Platform services the executors use: settings (providers, connections, limits).

    Settings come from the environment of the process that runs the step, so secrets are
    never part of a run's config.
    """

    platform: bool = False  # runs of API executions: waitpoints live in the platform database

    def services(self) -> Mapping[str, Any]:
        services: dict[str, Any] = {"settings": get_settings()}
        if self.platform:
            from flowmaestro_api.services.checkpoints import DatabaseCheckpointStore
            from flowmaestro_api.services.waitpoints import DatabaseWaitpointStore
            from flowmaestro_api.settings import get_api_settings

            api = get_api_settings()
            services["waitpoints"] = DatabaseWaitpointStore(
                api.database_url,
                sleep_threshold_seconds=api.wait_sleep_threshold_seconds,
                shards=api.code_location_shards,
            )
            services["checkpoints"] = DatabaseCheckpointStore(api.database_url)
        return services


class StaticServices:
    """Services from given settings (tests, embedding): bind with `hardcoded_resource`."""

    def __init__(self, settings: Settings, **extra: Any) -> None:
        self._services = {"settings": settings, **extra}

    def services(self) -> Mapping[str, Any]:
        return self._services


def static_services_resource(settings: Settings, **extra: Any) -> ResourceDefinition:
    return ResourceDefinition.hardcoded_resource(StaticServices(settings, **extra))
