"""GitLab: a project named by its path (`group/project`) becomes its numeric id.

GitLab takes a path as one URL-encoded segment (`group%2Fproject`), but an encoded slash
below the base URL is refused (a server could decode it into a step out of the prefix), so a
path is looked up with a projects search and the id put in its place.
"""

from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)


def project_id(api: HookApi, project: Any) -> str:
    """The numeric id of a project given by id or by `namespace/path`."""
    text = str(project).strip().strip("/")
    if text.isdigit():
        return text
    if "/" not in text:
        raise ParameterError(
            "project_id", f"parameters.project_id must be a number or group/project: {text!r}"
        )
    found = api.get(
        "/projects", [("search", text), ("search_namespaces", "true"), ("simple", "true")]
    )
    for item in found if isinstance(found, list) else []:
        if isinstance(item, Mapping) and str(item.get("path_with_namespace")) == text:
            return str(item["id"])
    raise ParameterError("project_id", f"GitLab has no project {text!r} this token can see")


def pipeline_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """getPipeline: /projects/{id}/pipelines/{pipeline_id}."""
    project = project_id(api, params["project_id"])
    prepared.path = f"/projects/{project}/pipelines/{int(params['pipeline_id'])}"
    return prepared


def merge_request_note_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """createMergeRequestNote: /projects/{id}/merge_requests/{iid}/notes."""
    project = project_id(api, params["project_id"])
    iid = int(params["merge_request_iid"])
    prepared.path = f"/projects/{project}/merge_requests/{iid}/notes"
    return prepared
