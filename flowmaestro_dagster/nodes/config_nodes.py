"""retryConfig and queueConfig nodes: settings the compiler and the API read.

At run time they do no work: each hands its upstream state on (so the edges through it keep
their order) with the settings it stands for as its output.
"""

from flowmaestro_dagster.nodes.base import NodeContext, NodeResult, wrap_output
from flowmaestro_dagster.spec.configs import QueueConfigConfig, RetryConfigConfig


def execute_retry_config(ctx: NodeContext) -> NodeResult:
    config = ctx.typed_config(RetryConfigConfig)
    return NodeResult(wrap_output({"retry": dict(config.retry)}, config.output_variable))


def execute_queue_config(ctx: NodeContext) -> NodeResult:
    config = ctx.typed_config(QueueConfigConfig)
    value = {
        "priority": config.priority,
        "queue": config.queue,
        "concurrencyKey": ctx.render_text(config.concurrency_key)
        if config.concurrency_key
        else None,
    }
    return NodeResult(wrap_output(value, config.output_variable))
