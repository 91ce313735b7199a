"""Segment: every call names who it is about (`userId` or `anonymousId`); Segment answers
200 and drops a call without either, so the node fails instead."""

from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)


def who(prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi) -> PreparedRequest:
    """track: refuse a call with neither `userId` nor `anonymousId`."""
    if params.get("userId") in (None, "") and params.get("anonymousId") in (None, ""):
        raise ParameterError("userId", "Segment needs parameters.userId or parameters.anonymousId")
    return prepared
