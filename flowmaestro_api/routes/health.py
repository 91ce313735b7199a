"""Liveness and readiness."""

from typing import Any

from fastapi import APIRouter
from sqlalchemy import text

from flowmaestro_api.deps import SessionDep, SessionRoute

router = APIRouter(route_class=SessionRoute, tags=["health"])


@router.get("/health")
def health(session: SessionDep) -> dict[str, Any]:
    session.execute(text("SELECT 1"))
    return {"status": "ok"}
