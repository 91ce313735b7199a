"""Medium: posts and publications belong to a user id, which a template rarely knows; `me`
(the default) is replaced by the token's user from GET /me."""

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

_ME = "/users/me/"


def author_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """The path's `/users/me/` as `/users/<the token's user id>/`."""
    if not prepared.path.startswith(_ME):
        return prepared
    me = api.get("/me")
    user = (me.get("data") or {}).get("id") if isinstance(me, Mapping) else None
    if not user:
        raise ParameterError("authorId", "Medium's /me returned no user id; give authorId")
    prepared.path = f"/users/{quote(str(user), safe='')}/" + prepared.path[len(_ME) :]
    return prepared
