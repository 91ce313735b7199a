"""DocuSign: an envelope's recipients, documents and custom fields in the shapes the
eSignature API wants.

DocuSign needs a `recipientId` per recipient and a `documentId` per document (numbers as
text, unique in the envelope); builders give plain lists of people and files. A template
envelope takes the signers as `templateRoles`, each naming the template's `roleName`.
"""

from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

_PERSON_KEYS = {"email_address": "email", "emailAddress": "email", "role": "roleName"}


def _person(value: Any, field: str, index: int) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ParameterError(field, f"parameters.{field}[{index}] must be {{email, name}}")
    person = {_PERSON_KEYS.get(str(k), str(k)): v for k, v in value.items()}
    if not person.get("email") or not person.get("name"):
        raise ParameterError(field, f"parameters.{field}[{index}] needs an email and a name")
    return person


def _documents(items: list[Any]) -> list[dict[str, Any]]:
    documents = []
    for index, item in enumerate(items, start=1):
        if not isinstance(item, Mapping):
            raise ParameterError("documents", f"parameters.documents[{index - 1}] is no object")
        document = dict(item)
        if "documentBase64" not in document and "content" in document:
            document["documentBase64"] = document.pop("content")
        if not document.get("documentBase64") or not document.get("name"):
            raise ParameterError(
                "documents", f"parameters.documents[{index - 1}] needs name and documentBase64"
            )
        name = str(document["name"])
        if "fileExtension" not in document and "." in name:
            document["fileExtension"] = name.rsplit(".", 1)[1]
        document.setdefault("documentId", str(index))
        documents.append(document)
    return documents


def _custom_fields(value: Mapping[str, Any]) -> dict[str, Any]:
    if "textCustomFields" in value or "listCustomFields" in value:
        return dict(value)
    fields = [{"name": str(k), "value": str(v), "show": "false"} for k, v in value.items()]
    return {"textCustomFields": fields}


def envelope_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """createEnvelope: recipients (or template roles), documents and custom fields."""
    body = dict(prepared.json or {})
    signers = [_person(s, "signers", i) for i, s in enumerate(params.get("signers") or [])]
    copies = [_person(c, "carbonCopies", i) for i, c in enumerate(params.get("carbonCopies") or [])]
    if params.get("templateId"):
        roles = signers + copies
        missing = [p["email"] for p in roles if not p.get("roleName")]
        if missing:
            raise ParameterError(
                "signers", f"a template envelope needs each signer's roleName: {missing[0]}"
            )
        if roles:
            body["templateRoles"] = roles
    else:
        if not params.get("documents"):
            raise ParameterError("documents", "createEnvelope needs documents or a templateId")
        body["documents"] = _documents(list(params["documents"]))
        if not signers:
            raise ParameterError("signers", "createEnvelope needs at least one signer")
        number = 0
        recipients: dict[str, list[dict[str, Any]]] = {}
        for kind, people in (("signers", signers), ("carbonCopies", copies)):
            for person in people:
                number += 1
                person.setdefault("recipientId", str(number))
                person.setdefault("routingOrder", "1")
                recipients.setdefault(kind, []).append(person)
        body["recipients"] = recipients
    if params.get("customFields"):
        body["customFields"] = _custom_fields(params["customFields"])
    prepared.json = body
    return prepared
