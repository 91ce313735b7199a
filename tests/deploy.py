"""Workflows created and deployed straight through the control plane, for tests that need
deployed rows without the API."""

import uuid
from typing import Any

from sqlalchemy.orm import Session

from flowmaestro_dagster.control.requests import WorkflowSettingsIn
from flowmaestro_dagster.control.workflows import create_workflow, mark_deployed
from flowmaestro_dagster.store.models import User


def fresh_user(session: Session) -> User:
    """A new user with a random address (flushed, so it has an id)."""
    user = User(email=f"{uuid.uuid4().hex[:8]}@example.com")
    session.add(user)
    session.flush()
    return user


def deploy(
    session: Session,
    user: User,
    definition: dict[str, Any],
    *,
    name: str | None = None,
    settings: WorkflowSettingsIn | None = None,
) -> str:
    """Create the workflow and deploy its version 1; its id."""
    workflow, _ = create_workflow(
        session, user=user, definition=definition, name=name, description=None, settings=settings
    )
    mark_deployed(session, user=user, workflow_id=workflow.id, version=1)
    return workflow.id
