"""CircleCI: a project slug (`gh/acme/api`) is three path segments, which a single `{param}`
may not hold (it cannot carry a slash), so the path is written here, each part encoded.
"""

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

_SEGMENT = re.compile(r"[A-Za-z0-9._\-]+")


def project_path(slug: Any) -> str:
    """`/project/<vcs>/<org>/<repo>` from a slug, every part one checked segment."""
    parts = str(slug).strip().strip("/").split("/")
    if len(parts) != 3 or not all(_SEGMENT.fullmatch(p) and p not in (".", "..") for p in parts):
        raise ParameterError(
            "project_slug", f"parameters.project_slug must be vcs/org/repo (gh/acme/api): {slug!r}"
        )
    return "/project/" + "/".join(quote(p, safe="") for p in parts)


def job_path(prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi) -> PreparedRequest:
    """getJob: /project/{vcs}/{org}/{repo}/job/{job_number}."""
    prepared.path = f"{project_path(params['project_slug'])}/job/{int(params['job_number'])}"
    return prepared
