"""Request dependencies: the session, the settings, Dagster, and the user behind the API key."""

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from flowmaestro_api.security import KeyCache, authenticate
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.control.executions import get_execution
from flowmaestro_dagster.errors import Forbidden
from flowmaestro_dagster.store.db import session_scope
from flowmaestro_dagster.store.models import Execution, User


class SessionRoute(APIRoute):
    """A route whose sync endpoint ends its database transaction as it returns, in its own
    thread: the request's session then holds no connection while the response is validated
    (FastAPI does that on another request thread) or while it waits to be closed. With a few
    request threads (FLOWMAESTRO_API_THREADS), requests holding connections would otherwise
    wait for threads held by requests waiting for connections."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if not inspect.iscoroutinefunction(endpoint) and (
            "session" in inspect.signature(endpoint).parameters
        ):
            endpoint = _ending_its_transaction(endpoint)
        super().__init__(path, endpoint, **kwargs)


def _ending_its_transaction(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(endpoint)
    def call(*args: Any, **kwargs: Any) -> Any:
        session: Session | None = kwargs.get("session")
        try:
            result = endpoint(*args, **kwargs)
        except BaseException:
            if session is not None:
                session.rollback()
            raise
        if session is not None:
            session.commit()
        return result

    return call


async def get_session(request: Request) -> AsyncIterator[Session]:
    """The request's session, made on the event loop (no I/O until it is used). It ends as
    `session_scope` does (commit on success, rollback on error), on a request thread only
    when it still has a transaction: a route that ended its own (`SessionRoute`'s sync
    routes, the submission) costs no thread hop for it."""
    sessions: sessionmaker[Session] = request.app.state.sessions
    session = sessions()
    try:
        yield session
    except BaseException:
        await _end(session, commit=False)
        raise
    await _end(session, commit=True)


async def _end(session: Session, *, commit: bool) -> None:
    if session.in_transaction():
        await run_in_threadpool(_finish, session, commit)
    else:
        session.close()  # no transaction: it holds no connection, nothing to send


def _finish(session: Session, commit: bool) -> None:
    try:
        if commit:
            session.commit()
        else:
            session.rollback()
    finally:
        session.close()


async def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


async def get_dagster(request: Request) -> DagsterClient:
    client: DagsterClient = request.app.state.dagster
    return client


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
DagsterDep = Annotated[DagsterClient, Depends(get_dagster)]


async def current_user(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> User:
    """The key's user: from the app's `KeyCache` on the event loop when the key was
    authenticated in the last FLOWMAESTRO_API_KEY_CACHE_SECONDS, else read (and remembered) on
    a request thread, in a transaction of its own. Either way a detached User of this
    request's own. No session dependency: a route that needs none (the submission, the read
    of an execution) opens none for its user."""
    raw = x_api_key
    if authorization and authorization.lower().startswith("bearer "):
        raw = authorization[7:]
    keys: KeyCache = request.app.state.api_keys
    known = keys.user(raw)
    if known is not None:
        return known
    return await run_in_threadpool(_authenticated, request.app.state.sessions, keys, raw)


def _authenticated(sessions: sessionmaker[Session], keys: KeyCache, raw: str | None) -> User:
    with session_scope(sessions) as session:  # commits the key's last use, if touched
        user = authenticate(session, raw)
    assert raw is not None  # authenticate refuses a missing key
    return keys.remember(raw, user)


CurrentUser = Annotated[User, Depends(current_user)]


async def current_operator(user: CurrentUser, settings: SettingsDep) -> User:
    """The caller, if their email is in FLOWMAESTRO_OPERATOR_EMAILS (403 otherwise)."""
    if not settings.is_operator(user.email):
        raise Forbidden("operators only: the key's user is not in FLOWMAESTRO_OPERATOR_EMAILS")
    return user


Operator = Annotated[User, Depends(current_operator)]


def get_own_execution(execution_id: str, session: SessionDep, user: CurrentUser) -> Execution:
    """The execution named in the path, if it is the caller's (404 otherwise).

    The read's transaction ends here, as `current_user`'s does: a request waiting for a
    request thread (FLOWMAESTRO_API_THREADS) must not hold a database connection meanwhile, or
    requests holding connections wait for threads held by requests waiting for connections."""
    execution = get_execution(session, user=user, execution_id=execution_id)
    session.commit()
    return execution


OwnExecution = Annotated[Execution, Depends(get_own_execution)]
