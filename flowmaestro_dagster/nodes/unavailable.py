"""Node types with no executor configured in this deployment: they fail with a clear error."""

from flowmaestro_dagster.errors import ConnectorNotConfiguredError
from flowmaestro_dagster.nodes.base import NodeContext, NodeResult


def execute_unavailable(ctx: NodeContext) -> NodeResult:
    provider = getattr(ctx.config, "provider", None)
    operation = getattr(ctx.config, "operation", None)
    if ctx.node_type == "integration" or provider:
        what = f"provider {provider or 'unknown'}" + (
            f" (operation {operation})" if operation else ""
        )
        message = f"no connector configured for {what}"
    else:
        message = f"no executor configured for node type '{ctx.node_type}'"
    raise ctx.error(message, ConnectorNotConfiguredError)
