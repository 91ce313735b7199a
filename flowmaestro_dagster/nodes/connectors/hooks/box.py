"""Box: an upload is named (the node's `fileName`, else the stored file's own name), and a
file's output carries the address people open it at.

Box takes the name twice: in the `attributes` part (what the file is called in Box) and as the
`file` part's filename; either alone is enough for the node.
"""

import json
from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

FILE_URL = "https://app.box.com/file/{id}"


def upload_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """uploadFile: the attributes' `name` and the file part's filename agree."""
    parts = {part.name: part for part in prepared.parts or []}
    attributes, upload = parts.get("attributes"), parts.get("file")
    if attributes is None or upload is None:
        raise ParameterError("file", "parameters.file is needed to upload a file")
    described = json.loads(attributes.data or b"{}")
    name = str(described.get("name") or upload.filename or "").strip()
    if not name:
        raise ParameterError("fileName", "parameters.fileName is needed for text content")
    described["name"] = name
    attributes.data = json.dumps(described).encode()
    upload.filename = upload.filename or name
    return prepared


def file_output(data: Any, params: Mapping[str, Any]) -> Any:
    """The file (an upload answers a list of one) with its `url` in the Box web app."""
    entries = data.get("entries") if isinstance(data, Mapping) else None
    if isinstance(entries, list) and entries and isinstance(entries[0], Mapping):
        data = entries[0]
    if isinstance(data, Mapping) and data.get("type") == "file" and data.get("id"):
        return {**data, "url": FILE_URL.format(id=data["id"])}
    return data
