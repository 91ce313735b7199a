"""Reddit: a submission's kind (a link post when the node gives a `url`), and the errors
Reddit reports inside a 200 answer (`json.errors`) as a node error with Reddit's code.
"""

from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.errors import NodeExecutionError
from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

_KINDS = ("self", "link")


def submission_kind(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """submitPost: `kind` is `link` with a url, else `self`; a subreddit without `r/`."""
    kind = str(params.get("kind") or ("link" if params.get("url") else "self")).lower()
    if kind not in _KINDS:
        raise ParameterError("kind", "parameters.kind must be self or link")
    if kind == "link" and not params.get("url"):
        raise ParameterError("url", "a link post needs parameters.url")
    form = dict(prepared.form or {})
    form["kind"] = kind
    form["sr"] = str(params["subreddit"]).strip().removeprefix("/").removeprefix("r/")
    if kind == "link":
        form.pop("text", None)
    prepared.form = form
    return prepared


def submission(data: Any, params: Mapping[str, Any]) -> Any:
    """The new post (`json.data`), or the first of Reddit's `json.errors` as a node error."""
    answer = data.get("json") if isinstance(data, Mapping) else None
    if not isinstance(answer, Mapping):
        return data
    errors = answer.get("errors") or []
    if errors:
        first = errors[0] if isinstance(errors[0], list) else [errors[0]]
        code = str(first[0]) if first else "ERROR"
        message = str(first[1]) if len(first) > 1 else code
        field = f" (field {first[2]})" if len(first) > 2 and first[2] else ""
        raise NodeExecutionError(
            f"reddit submitPost failed: {code}: {message}{field}",
            details={
                "provider": "reddit",
                "operation": "submitPost",
                "status": 200,
                "code": code,
                "message": message,
            },
        )
    return answer.get("data", answer)
