"""Linear (GraphQL): a team named by id becomes the query's filter, label names become label
ids (looked up first), and GraphQL errors, which Linear may answer with HTTP 200, become node
errors carrying Linear's own code and message.

The operations are one POST each to /graphql with a `query` and `variables` (the catalogue's
body template); Linear reports a failed query in `errors` ({message, extensions: {code,
userPresentableMessage}}) beside `data`, so a 2xx answer is not enough to call it a success.
"""

from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.errors import NodeExecutionError, TransientNodeError
from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

_TRANSIENT_CODES = frozenset({"RATELIMITED", "INTERNAL_SERVER_ERROR"})
_MESSAGE_CHARS = 300
MAX_LABELS = 50
LABELS_QUERY = (
    "query Labels($filter: IssueLabelFilter) { issueLabels(filter: $filter, first: 250) "
    "{ nodes { id name team { id } } } }"
)


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


def label_ids(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """createIssue with `labels` (names): their ids, the team's label before a workspace one
    of the same name (any case), added to `labelIds`. Names the workspace does not have are
    left out: the builder's templates name labels (`bug`) a workspace may not have, and the
    issue matters more than its label."""
    names = [str(n).strip() for n in params.get("labels") or [] if str(n).strip()]
    if not names:
        return prepared
    if len(names) > MAX_LABELS:
        raise ParameterError("labels", f"at most {MAX_LABELS} labels")
    wanted = {"or": [{"name": {"eqIgnoreCase": n}} for n in names]}
    answer = graphql_errors(
        api.request(
            "POST", "/graphql", json={"query": LABELS_QUERY, "variables": {"filter": wanted}}
        ),
        params,
    )
    found = (((answer or {}).get("data") or {}).get("issueLabels") or {}).get("nodes") or []
    team = str(params.get("teamId") or "")
    ids: dict[str, str] = {}
    for label in found:
        if not isinstance(label, Mapping) or not label.get("id"):
            continue
        key = str(label.get("name") or "").lower()
        owner = label.get("team")
        owner_id = owner.get("id") if isinstance(owner, Mapping) else None
        if owner_id and owner_id != team:
            continue  # another team's label
        if key not in ids or owner_id == team:
            ids[key] = str(label["id"])
    body = dict(prepared.json or {})
    variables = dict(body.get("variables") or {})
    issue = dict(variables.get("input") or {})
    chosen = [str(i) for i in issue.get("labelIds") or []]
    chosen += [ids[n.lower()] for n in names if n.lower() in ids and ids[n.lower()] not in chosen]
    issue["labelIds"] = chosen
    variables["input"] = issue
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
