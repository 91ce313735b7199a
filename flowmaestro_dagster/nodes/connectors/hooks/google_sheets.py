"""Google Sheets: the field mask an UpdateSheetPropertiesRequest needs.

Sheets changes only the properties named in `fields`; "*" would reset every property the node
does not send, so the mask is the keys the node gives.
"""

from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)


def sheet_properties(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    properties = {k: v for k, v in dict(params["properties"]).items() if k != "sheetId"}
    if not properties:
        raise ParameterError("properties", "parameters.properties names nothing to change")
    update = {
        "properties": {**properties, "sheetId": params["sheetId"]},
        "fields": ",".join(sorted(properties)),
    }
    prepared.json = {"requests": [{"updateSheetProperties": update}]}
    return prepared
