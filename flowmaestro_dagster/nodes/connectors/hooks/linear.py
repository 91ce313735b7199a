"""Linear (GraphQL): a team named by id becomes the query's filter, and GraphQL errors, which
Linear may answer with HTTP 200, become node errors carrying Linear's own code and message.

The operations are one POST each to /graphql with a `query` and `variables` (the catalogue's
body template); Linear reports a failed query in `errors` ({message, extensions: {code,
userPresentableMessage}}) beside `data`, so a 2xx answer is not enough to call it a success.
"""

from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.errors import NodeExecutionError, TransientNodeError
from flowmaestro_dagster.nodes.connectors.declarative import HookApi, PreparedRequest

_TRANSIENT_CODES = frozenset({"RATELIMITED", "INTERNAL_SERVER_ERROR"})
_MESSAGE_CHARS = 300


def team_filter(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """`teamId` given beside (or instead of) `filter`: `filter.team.id.eq` in the variables."""
    team = params.get("teamId")
    if not team:
        return prepared
    body = dict(prepared.json or {})
    variables = dict(body.get("variables") or {})
    condition = dict(variables.get("filter") or {})
    condition.setdefault("team", {"id": {"eq": str(team)}})
    variables["filter"] = condition
    body["variables"] = variables
    prepared.json = body
    return prepared


def graphql_errors(data: Any, params: Mapping[str, Any]) -> Any:
    """The answer when the query succeeded; a node error with Linear's code and message when
    `errors` came back without data (RATELIMITED and server errors are transient)."""
    if not isinstance(data, Mapping):
        return data
    errors = data.get("errors")
    payload = data.get("data")
    answered = isinstance(payload, Mapping) and any(v is not None for v in payload.values())
    if not errors or not isinstance(errors, list) or answered:
        return data
    first: Mapping[str, Any] = (
        errors[0] if isinstance(errors[0], Mapping) else {"message": str(errors[0])}
    )
    raw = first.get("extensions")
    extensions: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    code = str(extensions.get("code") or extensions.get("type") or "GRAPHQL_ERROR")
    message = str(
        extensions.get("userPresentableMessage") or first.get("message") or "query failed"
    )[:_MESSAGE_CHARS]
    details = {"provider": "linear", "status": 200, "code": code, "message": message}
    text = f"linear failed: {code}: {message}"
    if code in _TRANSIENT_CODES:
        raise TransientNodeError(text, details=details)
    raise NodeExecutionError(text, details=details)
