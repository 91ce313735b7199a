"""Tableau: a run signs in with the connection's personal access token and sends the session
token as X-Tableau-Auth; the signed-in site's id fills the operations' `{site_id}`.

The sign-in's answer: {credentials: {token, site: {id, contentUrl}, user: {id}}}. Its token
is masked in every message of the run like the connection's own secrets.
"""

from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.errors import NodeExecutionError
from flowmaestro_dagster.nodes.connectors.declarative import HookApi, SessionAuth


def sign_in(api: HookApi, params: Mapping[str, Any]) -> SessionAuth:
    """POST /auth/signin with the token's name and secret for the connection's site."""
    credentials = {
        "personalAccessTokenName": api.secret("token_name"),
        "personalAccessTokenSecret": api.secret("token_secret"),
        "site": {"contentUrl": api.field("site") or ""},
    }
    answer = api.request("POST", "/auth/signin", json={"credentials": credentials}, auth=False)
    signed = answer.get("credentials") if isinstance(answer, Mapping) else None
    token = signed.get("token") if isinstance(signed, Mapping) else None
    site = signed.get("site") if isinstance(signed, Mapping) else None
    if not token or not isinstance(site, Mapping) or not site.get("id"):
        raise api.error(
            "Tableau's sign-in answered without a session token", cls=NodeExecutionError
        )
    api.mask(str(token))
    user = signed.get("user") if isinstance(signed, Mapping) else None
    values = {"site_id": str(site["id"])}
    if isinstance(user, Mapping) and user.get("id"):
        values["user_id"] = str(user["id"])
    return SessionAuth(headers={"X-Tableau-Auth": str(token)}, values=values)
