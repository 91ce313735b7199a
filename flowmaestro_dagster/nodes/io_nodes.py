"""input, trigger and output nodes: where values enter and leave a workflow."""

import json
import math
from typing import Any

from flowmaestro_dagster.errors import NodeConfigurationError
from flowmaestro_dagster.lang.expressions import to_number
from flowmaestro_dagster.nodes.base import NodeContext, NodeResult
from flowmaestro_dagster.spec.configs import InputConfig, OutputConfig, TriggerConfig

_MISSING: Any = object()


def input_value(config: InputConfig, inputs: dict[str, Any]) -> Any:
    """The value an input node takes from the execution inputs (`_MISSING` if none)."""
    for name in config.names or ([config.name] if config.name else []):
        if name in inputs:
            return inputs[name]
    if config.has_default:
        return config.default_value
    return _MISSING


def coerce_input(value: Any, input_type: str) -> Any:
    """Light coercion of text submitted for typed inputs ("5" for a number input)."""
    if not isinstance(value, str):
        return value
    kind = input_type.lower()
    if kind == "number":
        number = to_number(value)
        if math.isnan(number):
            return value
        return int(number) if number.is_integer() else number
    if kind in ("boolean", "bool"):
        lowered = value.strip().lower()
        if lowered in ("true", "yes", "1"):
            return True
        if lowered in ("false", "no", "0", ""):
            return False
        return value
    if kind in ("json", "object", "array"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def execute_input(ctx: NodeContext) -> NodeResult:
    config = ctx.typed_config(InputConfig)
    if not config.name:
        # An unnamed input node hands on the whole inputs object (`{{input.data}}`).
        return NodeResult(dict(ctx.state.inputs))
    value = input_value(config, dict(ctx.state.inputs))
    if value is _MISSING:
        if config.required:
            raise ctx.error(
                f"required input '{config.name}' was not provided", NodeConfigurationError
            )
        value = None
    value = coerce_input(value, config.input_type)
    names = config.names or [config.name or ctx.node_id]
    output = dict.fromkeys(names, value)
    if config.output_variable:
        output[config.output_variable] = value
    return NodeResult(output)


def execute_files(ctx: NodeContext) -> NodeResult:
    """A files node is an upload field: its value is the execution input it names."""
    extras = ctx.config.extras()
    name = extras.get("inputVariable") or extras.get("inputName") or ctx.node_id
    value = ctx.state.inputs.get(str(name))
    output: dict[str, Any] = {str(name): value}
    if ctx.config.output_variable:
        output[ctx.config.output_variable] = value
    return NodeResult(output)


def execute_trigger(ctx: NodeContext) -> NodeResult:
    config = ctx.typed_config(TriggerConfig)
    payload = dict(ctx.state.inputs)
    output: dict[str, Any] = dict(payload)
    if config.output_variable:
        output[config.output_variable] = payload
    return NodeResult(output)


def execute_output(ctx: NodeContext) -> NodeResult:
    config = ctx.typed_config(OutputConfig)
    value = ctx.render(config.value) if config.has_value else ctx.upstream_value()
    return NodeResult({output_name(ctx.node_id, config): value})


def output_name(node_id: str, config: OutputConfig) -> str:
    return config.name or node_id
