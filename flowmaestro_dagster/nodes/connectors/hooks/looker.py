"""Looker: a connection holding an API key (client id and secret) logs in at the start of a
run (POST /login, a form) and sends the access token it gets as `Authorization: token ...`.

Looker's login answers {access_token, token_type, expires_in} (an hour): one run never
outlives it, and a 401 logs in again once.
"""

from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import HookApi, SessionAuth


def log_in(api: HookApi, params: Mapping[str, Any]) -> SessionAuth:
    """POST /login with the API key's client id and secret."""
    form = {"client_id": api.secret("client_id"), "client_secret": api.secret("client_secret")}
    answer = api.request("POST", "/login", data=form, auth=False)
    token = answer.get("access_token") if isinstance(answer, Mapping) else None
    if not token:
        raise api.error("Looker's login answered without an access token")
    api.mask(str(token))
    return SessionAuth(headers={"Authorization": f"token {token}"})
