"""Bitbucket: a pull request's reviewers are set by a PUT of the pull request, so adding
reviewers reads the current list first (and keeps the title and description, which the PUT
would otherwise blank).
"""

from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)


def _reviewer(value: Any) -> dict[str, str]:
    """`{uuid}` (braces included, Bitbucket's spelling) or an Atlassian account id."""
    if isinstance(value, Mapping):
        if value.get("uuid"):
            return {"uuid": str(value["uuid"])}
        if value.get("account_id"):
            return {"account_id": str(value["account_id"])}
        raise ParameterError("reviewers", "a reviewer object needs a uuid or an account_id")
    text = str(value).strip()
    if not text:
        raise ParameterError("reviewers", "parameters.reviewers holds an empty reviewer")
    return {"uuid": text} if text.startswith("{") else {"account_id": text}


def add_reviewers(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """The pull request's reviewers plus the node's, each once."""
    current = api.get(prepared.path)
    if not isinstance(current, Mapping):
        raise ParameterError("pull_request_id", "Bitbucket returned no pull request")
    reviewers: list[dict[str, str]] = []
    for item in current.get("reviewers") or []:
        if isinstance(item, Mapping) and (item.get("uuid") or item.get("account_id")):
            reviewers.append(_reviewer(item))
    for item in params.get("reviewers") or []:
        reviewer = _reviewer(item)
        if reviewer not in reviewers:
            reviewers.append(reviewer)
    body: dict[str, Any] = {"title": current.get("title") or ""}
    if current.get("description") is not None:
        body["description"] = current["description"]
    body["reviewers"] = reviewers
    prepared.json = body
    return prepared
