"""monday.com (GraphQL): create or update an item, with column values as the JSON text the
API's `JSON` scalar takes, and GraphQL errors as node errors.

Values always travel as GraphQL variables, never spliced into the query text.
"""

import json
from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.errors import NodeExecutionError
from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

CREATE_ITEM = (
    "mutation ($boardId: ID!, $itemName: String!, $groupId: String, $columnValues: JSON, "
    "$createLabels: Boolean) { create_item(board_id: $boardId, item_name: $itemName, "
    "group_id: $groupId, column_values: $columnValues, create_labels_if_missing: "
    "$createLabels) { id name url board { id } } }"
)
UPDATE_ITEM = (
    "mutation ($boardId: ID!, $itemId: ID!, $columnValues: JSON!, $createLabels: Boolean) "
    "{ change_multiple_column_values(board_id: $boardId, item_id: $itemId, column_values: "
    "$columnValues, create_labels_if_missing: $createLabels) { id name url board { id } } }"
)


def item_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """createOrUpdateItem: create_item, or change_multiple_column_values with `itemId`."""
    columns = dict(params.get("columnValues") or {})
    variables: dict[str, Any] = {"boardId": str(params["boardId"])}
    if params.get("itemId"):
        if params.get("itemName"):
            columns["name"] = params["itemName"]
        if not columns:
            raise ParameterError("columnValues", "an item update needs columnValues or itemName")
        variables.update(itemId=str(params["itemId"]), columnValues=json.dumps(columns))
        query = UPDATE_ITEM
    else:
        if not params.get("itemName"):
            raise ParameterError("itemName", "creating an item needs parameters.itemName")
        variables["itemName"] = params["itemName"]
        if params.get("groupId"):
            variables["groupId"] = params["groupId"]
        if columns:
            variables["columnValues"] = json.dumps(columns)
        query = CREATE_ITEM
    variables["createLabels"] = bool(params.get("createLabelsIfMissing", True))
    prepared.json = {"query": query, "variables": variables}
    return prepared


def item_result(data: Any, params: Mapping[str, Any]) -> Any:
    """The created or updated item; a GraphQL error raises with monday's message and code."""
    if isinstance(data, Mapping):
        errors = data.get("errors")
        if isinstance(errors, list) and errors:
            first: Mapping[str, Any] = (
                errors[0] if isinstance(errors[0], Mapping) else {"message": str(errors[0])}
            )
            extensions = first.get("extensions")
            code = (
                str(extensions["code"])
                if isinstance(extensions, Mapping) and extensions.get("code")
                else None
            )
            message = str(first.get("message") or "monday.com refused the request")
            raise NodeExecutionError(
                f"monday createOrUpdateItem failed: {code + ': ' if code else ''}{message}",
                details={
                    "provider": "monday",
                    "operation": "createOrUpdateItem",
                    "code": code,
                    "message": message,
                },
            )
        result = data.get("data")
        if isinstance(result, Mapping):
            for key in ("create_item", "change_multiple_column_values"):
                if isinstance(result.get(key), Mapping):
                    return result[key]
    raise NodeExecutionError(
        "monday createOrUpdateItem failed: the answer holds no item",
        details={"provider": "monday", "operation": "createOrUpdateItem"},
    )
