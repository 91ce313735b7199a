"""Dagster resources the node ops require."""

from collections.abc import Mapping
from typing import Any

from dagster import ConfigurableResource, Field, InitResourceContext, Permissive, resource


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
    """Platform services the executors use (providers, connections, connectors)."""

    def services(self) -> Mapping[str, Any]:
        return {}
