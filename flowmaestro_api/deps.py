"""Request dependencies: the session, the settings, Dagster, and the user behind the API key."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from flowmaestro_api.security import authenticate
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.control.executions import get_execution
from flowmaestro_dagster.errors import Forbidden
from flowmaestro_dagster.store.db import session_scope
from flowmaestro_dagster.store.models import Execution, User


def get_session(request: Request) -> Iterator[Session]:
    with session_scope(request.app.state.sessions) as session:
        yield session


def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


def get_dagster(request: Request) -> DagsterClient:
    client: DagsterClient = request.app.state.dagster
    return client


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
DagsterDep = Annotated[DagsterClient, Depends(get_dagster)]


def current_user(
    session: SessionDep,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> User:
    raw = x_api_key
    if authorization and authorization.lower().startswith("bearer "):
        raw = authorization[7:]
    user = authenticate(session, raw)
    session.commit()
    return user


CurrentUser = Annotated[User, Depends(current_user)]


def current_operator(user: CurrentUser, settings: SettingsDep) -> User:
    """The caller, if their email is in FLOWMAESTRO_OPERATOR_EMAILS (403 otherwise)."""
    if not settings.is_operator(user.email):
        raise Forbidden("operators only: the key's user is not in FLOWMAESTRO_OPERATOR_EMAILS")
    return user


Operator = Annotated[User, Depends(current_operator)]


def get_own_execution(execution_id: str, session: SessionDep, user: CurrentUser) -> Execution:
    """The execution named in the path, if it is the caller's (404 otherwise)."""
    return get_execution(session, user=user, execution_id=execution_id)


OwnExecution = Annotated[Execution, Depends(get_own_execution)]
