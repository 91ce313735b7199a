"""Dropbox Sign: signers as `{email_address, name}` and a template request sent where
templates go.

Builders spell signers `{email, name}`; a request from a template goes to
`send_with_template` with `template_ids`, signer roles and custom fields as
`[{name, value}]`. A request from files needs file URLs.
"""

from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)


def _signer(value: Any, index: int, template: bool) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ParameterError("signers", f"parameters.signers[{index}] must be {{email, name}}")
    signer = dict(value)
    if "email_address" not in signer:
        signer["email_address"] = signer.pop("email", None) or signer.pop("emailAddress", None)
    if "role" not in signer and "roleName" in signer:
        signer["role"] = signer.pop("roleName")
    if not signer.get("email_address") or not signer.get("name"):
        raise ParameterError("signers", f"parameters.signers[{index}] needs an email and a name")
    if template and not signer.get("role"):
        raise ParameterError("signers", f"parameters.signers[{index}] needs the template's role")
    return signer


def signature_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """createSignatureRequest: from files, or from a template (send_with_template)."""
    body = dict(prepared.json or {})
    template = params.get("template_id")
    signers = [_signer(s, i, bool(template)) for i, s in enumerate(params["signers"])]
    if template:
        prepared.path = "/signature_request/send_with_template"
        body.pop("file_urls", None)
        body["template_ids"] = template if isinstance(template, list) else [template]
        fields = params.get("custom_fields") or {}
        if fields:
            body["custom_fields"] = [{"name": str(k), "value": v} for k, v in fields.items()]
    else:
        if not params.get("file_urls"):
            raise ParameterError("file_urls", "a signature request needs file_urls or a template")
        if params.get("custom_fields"):
            raise ParameterError("custom_fields", "custom_fields need a template_id")
    body["signers"] = signers
    prepared.json = body
    return prepared
