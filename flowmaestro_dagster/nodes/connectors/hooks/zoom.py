"""Zoom: a registrant joins a meeting (`meetingId`) or a webinar (`webinarId`); the two
share one operation because templates name either."""

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)


def registrant_target(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """addRegistrant: `/meetings/{id}/registrants` or `/webinars/{id}/registrants`."""
    for field, kind in (("webinarId", "webinars"), ("meetingId", "meetings")):
        value = str(params.get(field) or "").replace(" ", "")
        if value:
            if not value.isdigit():
                raise ParameterError(field, f"parameters.{field} must be a Zoom numeric id")
            prepared.path = f"/{kind}/{quote(value, safe='')}/registrants"
            return prepared
    raise ParameterError("meetingId", "addRegistrant needs parameters.meetingId or .webinarId")
