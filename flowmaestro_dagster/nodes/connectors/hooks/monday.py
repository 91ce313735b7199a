"""monday.com (GraphQL): create or update an item (found by its id, else by its name on the
board), with column values as the JSON text the API's `JSON` scalar takes, and GraphQL errors
as node errors.

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

FIND_ITEM = (
    "query ($boardId: ID!, $itemName: String!) { items_page_by_column_values(board_id: "
    '$boardId, limit: 1, columns: [{column_id: "name", column_values: [$itemName]}]) '
    "{ items { id name } } }"
)


def _item_named(api: HookApi, board: str, name: str) -> str | None:
    """The id of the board's item called `name` (monday matches names exactly), if any."""
    answer = api.request(
        "POST", "/v2", json={"query": FIND_ITEM, "variables": {"boardId": board, "itemName": name}}
    )
    if isinstance(answer, Mapping) and answer.get("errors"):
        item_result(answer, {})  # raises monday's error
    page = ((answer or {}).get("data") or {}).get("items_page_by_column_values") or {}
    items = page.get("items") if isinstance(page, Mapping) else None
    first = items[0] if isinstance(items, list) and items else None
    return str(first["id"]) if isinstance(first, Mapping) and first.get("id") else None


def item_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """createOrUpdateItem: change_multiple_column_values of the item with `itemId`, else of
    the board's item named `itemName` (unless `matchByName` is false), else create_item."""
    columns = dict(params.get("columnValues") or {})
    board = str(params["boardId"])
    variables: dict[str, Any] = {"boardId": board}
    item_id = params.get("itemId")
    if not item_id and params.get("itemName") and params.get("matchByName", True):
        item_id = _item_named(api, board, str(params["itemName"]))
    if item_id:
        if params.get("itemName"):
            columns["name"] = params["itemName"]
        if not columns:
            raise ParameterError("columnValues", "an item update needs columnValues or itemName")
        variables.update(itemId=str(item_id), columnValues=json.dumps(columns))
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
