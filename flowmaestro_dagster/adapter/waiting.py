"""What a run parked at a waitpoint shows operators in the Dagster UI: its tags and its event.

The tags are what an operator filters the runs page by (`flowmaestro/waiting=approval`); the
`waiting` event in the run's log says the same in a sentence, with the approval link. Both are
built here from the `Park` an executor returned, without Dagster, so tests read them as data.
The control side takes the waiting tags off when the run is resumed (`clear_waiting`).
"""

from datetime import UTC, datetime
from typing import Any

from flowmaestro_dagster.nodes.base import Park
from flowmaestro_dagster.tags import (
    APPROVAL_URL_TAG,
    PARKED_TAG,
    WAITING_NODE_TAG,
    WAITING_TAG,
    WAITING_UNTIL_TAG,
)

MAX_TAG_VALUE = 255  # a label is free text; a tag shows a line of it


def approval_url(public_api_url: str, waitpoint_id: str) -> str:
    """Where an approver decides (the API's `GET /approvals/{id}`)."""
    return f"{public_api_url.rstrip('/')}/approvals/{waitpoint_id}"


def utc_iso(moment: datetime) -> str:
    """`2025-01-31T09:30:00Z`: one form for tags and events, whatever zone the time came in."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def waiting_tags(parked: Park, label: str, public_api_url: str) -> dict[str, str]:
    """The run tags of a parked run: the visible ones an operator filters by, and the hidden
    `PARKED_TAG` that stays after the resume (the timeline reads it)."""
    tags = {
        WAITING_TAG: parked.kind,
        WAITING_NODE_TAG: label[:MAX_TAG_VALUE],
        PARKED_TAG: parked.kind,
    }
    if parked.due_at is not None:
        tags[WAITING_UNTIL_TAG] = utc_iso(parked.due_at)
    if parked.kind == "approval":
        tags[APPROVAL_URL_TAG] = approval_url(public_api_url, parked.waitpoint_id)
    return tags


def waiting_event(
    parked: Park, node_id: str, label: str, public_api_url: str
) -> tuple[dict[str, Any], str]:
    """The `waiting` platform event of a parked node: its data and its sentence."""
    data: dict[str, Any] = {
        "node_id": node_id,
        "label": label,
        "kind": parked.kind,
        "waitpoint_id": parked.waitpoint_id,
        "due_at": utc_iso(parked.due_at) if parked.due_at is not None else None,
    }
    if parked.kind == "approval":
        url = approval_url(public_api_url, parked.waitpoint_id)
        data["approval_url"] = url
        return data, f"Waiting for approval at {label}: approve at {url}"
    if parked.kind == "datetime" and parked.due_at is not None:
        return data, f"Waiting at {label} until {utc_iso(parked.due_at)}"
    if parked.kind == "callback":
        return data, f"Waiting at {label} for a callback"
    if parked.kind == "child":
        return data, f"Waiting at {label} for a child workflow to finish"
    return data, f"Waiting at {label} ({parked.kind})"
