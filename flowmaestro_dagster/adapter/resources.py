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

from flowmaestro_dagster.adapter.ops import INPUTS_RESOURCE, SERVICES_RESOURCE
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
    """Services the executors use: settings (providers, connections, limits).

    Settings come from the environment of the process that runs the step, so secrets are
    never part of a run's config. The platform's code locations use `PlatformResource`
    (orchestration/resources.py), which adds the waitpoint and checkpoint stores.
    """

    def services(self) -> Mapping[str, Any]:
        return {"settings": get_settings()}


class StaticServices:
    """Services from given settings (tests, embedding): bind with `hardcoded_resource`."""

    def __init__(self, settings: Settings, **extra: Any) -> None:
        self._services = {"settings": settings, **extra}

    def services(self) -> Mapping[str, Any]:
        return self._services


def static_services_resource(settings: Settings, **extra: Any) -> ResourceDefinition:
    return ResourceDefinition.hardcoded_resource(StaticServices(settings, **extra))


def default_resources() -> dict[str, Any]:
    """What a compiled job's ops require: the run's inputs and the services (from settings)."""
    return {INPUTS_RESOURCE: workflow_inputs_resource, SERVICES_RESOURCE: FlowMaestroResource()}


def resources_for(settings: Settings | None = None) -> dict[str, Any]:
    """The node ops' resources, with `settings` in place of the environment's."""
    resources = default_resources()
    if settings is not None:
        resources[SERVICES_RESOURCE] = static_services_resource(settings)
    return resources
