"""Failure notifications (`onError.notify`): a JSON POST when a node fails for good.

The POST goes through the webhook connector, so it gets the same SSRF guard, connection
headers and HMAC signing as any webhook node. `notify: true` uses the connection named
`notify` (`FLOWMAESTRO_CONNECTIONS__NOTIFY__URL=...`); a name picks another connection; a URL
is called directly. The body carries a `text` line, so a Slack incoming webhook shows it as is.
A notification never changes the node's outcome: when it cannot be sent it is logged and
dropped.
"""

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes.base import NodeContext, settings_of
from flowmaestro_dagster.nodes.connectors import ConnectorRequest
from flowmaestro_dagster.nodes.connectors.webhook import send
from flowmaestro_dagster.spec.configs import MediaConfig
from flowmaestro_dagster.spec.policies import NotifyTarget
from flowmaestro_dagster.tags import EXECUTION_TAG, WORKFLOW_ID_TAG, WORKFLOW_NAME_TAG

NOTIFY_TIMEOUT_S = 10.0
_log = logging.getLogger("flowmaestro.notify")


def failure_payload(
    *,
    node_id: str,
    node_type: str,
    label: str,
    error: Mapping[str, Any],
    handled_by: str,
    run_id: str | None,
    run_tags: Mapping[str, str],
) -> dict[str, Any]:
    """What a failure notification says (plain JSON)."""
    workflow = run_tags.get(WORKFLOW_NAME_TAG) or run_tags.get("dagster/job_name") or ""
    attempts = error.get("attempts", 1)
    where = f" in workflow '{workflow}'" if workflow else ""
    text = (
        f"FlowMaestro: node '{label}' ({node_type}){where} failed after {attempts} "
        f"attempt{'s' if attempts != 1 else ''}: {error.get('message', '')}"
    )
    if handled_by != "fail":
        text += f" (handled: {handled_by})"
    return {
        "event": "node.failed",
        "text": text,
        "workflow": workflow or None,
        "workflowId": run_tags.get(WORKFLOW_ID_TAG),
        "executionId": run_tags.get(EXECUTION_TAG),
        "runId": run_id,
        "nodeId": node_id,
        "label": label,
        "type": node_type,
        "handledBy": handled_by,
        "error": dict(error),
        "timestamp": datetime.now(UTC).isoformat(),
    }


def notify_failure(
    target: NotifyTarget,
    payload: Mapping[str, Any],
    *,
    services: Mapping[str, Any],
    state: ExecutionState,
    log: logging.Logger | None = None,
) -> bool:
    """POST `payload` to `target`; True if it was delivered. Never raises."""
    logger = log or _log
    settings = settings_of(services)
    connection = None
    if target.connection is not None:
        connection = settings.connections.get(target.connection)
        if connection is None:
            logger.warning(
                f"failure notification not sent: no connection '{target.connection}' is "
                f"configured (FLOWMAESTRO_CONNECTIONS__{target.connection.upper()}__URL)"
            )
            return False
    node = NodeContext(
        node_id=str(payload.get("nodeId", "")),
        node_type=str(payload.get("type", "")),
        label=str(payload.get("label", "")),
        config=MediaConfig.model_validate({}),
        state=state,
        services=services,
    )
    parameters: dict[str, Any] = {"body": dict(payload), "timeout": NOTIFY_TIMEOUT_S}
    if target.url is not None:
        parameters["url"] = target.url
    request = ConnectorRequest(
        provider="webhook",
        operation="notify",
        parameters=parameters,
        connection=connection,
        connection_name=target.connection,
        settings=settings,
        node=node,
    )
    try:
        send(request)
    except Exception as exc:  # noqa: BLE001 - a notification must never change the node's outcome
        logger.warning(f"failure notification not sent: {exc}")
        return False
    return True


__all__ = ["failure_payload", "notify_failure"]
