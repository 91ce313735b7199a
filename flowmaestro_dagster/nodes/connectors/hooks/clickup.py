"""ClickUp: create-or-update a task. A task id updates that task; otherwise the list is
searched for a task of the same name (a bounded number of pages), so a sync that runs again
updates what it created instead of adding a duplicate.

ClickUp's update takes assignees as `{add: [...], rem: [...]}` and no tags or custom fields
(those have their own endpoints), unlike creation.
"""

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from flowmaestro_dagster.nodes.connectors.declarative import HookApi, PreparedRequest

MAX_LOOKUP_PAGES = 5
"""Pages of (up to 100) tasks read to find a task by name before creating one."""
_UPDATE_FIELDS = (
    "name",
    "description",
    "markdown_content",
    "status",
    "priority",
    "due_date",
    "start_date",
)


def _find_by_name(api: HookApi, list_id: str, name: str) -> str | None:
    path = f"/list/{quote(list_id, safe='')}/task"
    for page in range(MAX_LOOKUP_PAGES):
        answer = api.get(path, [("page", str(page)), ("include_closed", "true")])
        tasks = answer.get("tasks") if isinstance(answer, Mapping) else None
        if not isinstance(tasks, list):
            return None
        for task in tasks:
            if isinstance(task, Mapping) and task.get("name") == name and task.get("id"):
                return str(task["id"])
        if not tasks or answer.get("last_page", True):
            return None
    return None


def _user_ids(values: Any) -> list[Any]:
    """ClickUp's user ids are numbers; templates often give them as text."""
    return [int(v) if isinstance(v, str) and v.strip().isdigit() else v for v in values or []]


def create_task(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """createTask: assignees as numbers."""
    if params.get("assignees") and isinstance(prepared.json, dict):
        prepared.json["assignees"] = _user_ids(params["assignees"])
    return prepared


def upsert_task(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """createOrUpdateTask: PUT the task found by id or name, else POST a new one."""
    task_id = params.get("task_id") or _find_by_name(
        api, str(params["list_id"]), str(params["name"])
    )
    if not task_id:
        return create_task(prepared, params, api)
    created = dict(prepared.json or {})
    update: dict[str, Any] = {k: created[k] for k in _UPDATE_FIELDS if k in created}
    if params.get("assignees"):
        update["assignees"] = {"add": _user_ids(params["assignees"])}
    prepared.method = "PUT"
    prepared.path = f"/task/{quote(str(task_id), safe='')}"
    prepared.json = update
    return prepared
