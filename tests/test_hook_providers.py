"""Providers' webhook verification, each delivery built the way the provider documents it (HMAC
signatures, Discord's Ed25519, Salesforce's SOAP outbound messages), the event a delivery names,
the handshakes, and the builder's warning for a provider nothing verifies."""

import base64
import hashlib
import hmac
import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from flowmaestro_dagster.compile.validation import validate
from flowmaestro_dagster.control.hook_providers import (
    PROVIDERS,
    SALESFORCE_ACK,
    Delivery,
    Keys,
    delivery_event,
    event_matches,
    handshake,
    interaction_answer,
    provider_delivery_id,
    salesforce_message,
)
from flowmaestro_dagster.errors import BadSignature, InvalidRequest
from flowmaestro_dagster.settings import ConnectionSettings
from flowmaestro_dagster.spec.providers import (
    DISCORD_INTERACTIONS,
    VERIFIED_HOOK_PROVIDERS,
    undeliverable_event,
)
from tests.builders import flow, node

SECRET = "provider-secret"
BODY = json.dumps({"action": "opened", "type": "invoice.paid"}).encode()
NOW = time.time()


def _mac(message: bytes, secret: str = SECRET) -> bytes:
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()


# Each provider's documented headers, for (secret, body, unix time).
def github(secret: str, body: bytes, _: int) -> dict[str, str]:
    return {"x-hub-signature-256": "sha256=" + _mac(body, secret).hex()}


def stripe(secret: str, body: bytes, t: int) -> dict[str, str]:
    return {"stripe-signature": f"t={t},v1={_mac(f'{t}.'.encode() + body, secret).hex()}"}


def slack(secret: str, body: bytes, t: int) -> dict[str, str]:
    digest = _mac(f"v0:{t}:".encode() + body, secret).hex()
    return {"x-slack-request-timestamp": str(t), "x-slack-signature": f"v0={digest}"}


def shopify(secret: str, body: bytes, _: int) -> dict[str, str]:
    return {"x-shopify-hmac-sha256": base64.b64encode(_mac(body, secret)).decode()}


def typeform(secret: str, body: bytes, _: int) -> dict[str, str]:
    return {"typeform-signature": "sha256=" + base64.b64encode(_mac(body, secret)).decode()}


def discord(private_key: Ed25519PrivateKey, body: bytes, t: int) -> dict[str, str]:
    """Discord signs the timestamp followed by the raw body with the application's key."""
    signature = private_key.sign(str(t).encode() + body).hex()
    return {"x-signature-ed25519": signature, "x-signature-timestamp": str(t)}


def public_hex(private_key: Ed25519PrivateKey) -> str:
    """The key as the Developer Portal shows it: 32 raw bytes, hex."""
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


PRIVATE_KEY = Ed25519PrivateKey.generate()
DISCORD_CONNECTION = ConnectionSettings.model_validate({"public_key": public_hex(PRIVATE_KEY)})

SIGNERS = {
    "github": github,
    "stripe": stripe,
    "slack": slack,
    "shopify": shopify,
    "typeform": typeform,
}
TIMESTAMPED = ("stripe", "slack")


def check(provider: str, headers: dict[str, str], body: bytes = BODY) -> None:
    PROVIDERS[provider].check(Keys(SECRET), Delivery(headers, body, NOW, 300.0))


def test_the_registry_and_the_builders_list_agree() -> None:
    assert set(PROVIDERS) == VERIFIED_HOOK_PROVIDERS == {*SIGNERS, "discord", "salesforce"}
    for name, signer in SIGNERS.items():  # the header that selects the verifier is signed
        assert PROVIDERS[name].selects(signer(SECRET, BODY, int(NOW)))
    assert PROVIDERS["discord"].selects(discord(PRIVATE_KEY, BODY, int(NOW)))
    assert PROVIDERS["salesforce"].selects({"content-type": "text/xml; charset=utf-8"})
    assert not PROVIDERS["salesforce"].selects({"content-type": "application/json"})


@pytest.mark.parametrize("provider", sorted(SIGNERS))
def test_a_delivery_signed_as_documented_is_accepted(provider: str) -> None:
    check(provider, SIGNERS[provider](SECRET, BODY, int(NOW)))


@pytest.mark.parametrize("provider", sorted(SIGNERS))
def test_another_secret_or_another_body_is_refused(provider: str) -> None:
    with pytest.raises(BadSignature):
        check(provider, SIGNERS[provider]("other-secret", BODY, int(NOW)))
    with pytest.raises(BadSignature):
        check(provider, SIGNERS[provider](SECRET, BODY, int(NOW)), body=BODY + b" ")
    with pytest.raises(BadSignature):
        check(provider, {})


@pytest.mark.parametrize("provider", TIMESTAMPED)
def test_a_replay_older_than_the_tolerance_is_refused(provider: str) -> None:
    with pytest.raises(BadSignature):
        check(provider, SIGNERS[provider](SECRET, BODY, int(NOW) - 301))
    with pytest.raises(BadSignature):
        check(provider, SIGNERS[provider](SECRET, BODY, int(NOW) + 301))
    check(provider, SIGNERS[provider](SECRET, BODY, int(NOW) - 290))


def test_slack_keeps_its_five_minutes_whatever_the_platform_tolerance() -> None:
    old = slack(SECRET, BODY, int(NOW) - 400)
    with pytest.raises(BadSignature):
        PROVIDERS["slack"].check(Keys(SECRET), Delivery(old, BODY, NOW, 3600.0))


def test_a_non_ascii_timestamp_is_a_bad_signature_not_a_crash() -> None:
    headers = {**slack(SECRET, BODY, int(NOW)), "x-slack-request-timestamp": "\u00b2"}
    with pytest.raises(BadSignature):
        check("slack", headers)


def test_the_event_a_delivery_names() -> None:
    payload = {"action": "opened", "type": "invoice.paid", "event": {"type": "message"}}
    assert delivery_event("github", {"x-github-event": "pull_request"}, payload) == (
        "pull_request.opened"
    )
    assert delivery_event("GitHub", {"x-github-event": "push"}, {}) == "push"
    assert delivery_event("github", {}, payload) is None
    assert delivery_event("stripe", {}, payload) == "invoice.paid"
    assert delivery_event("slack", {}, payload) == "message"
    assert delivery_event("shopify", {"x-shopify-topic": "orders/create"}, None) == "orders/create"
    assert delivery_event("typeform", {}, payload) is None
    assert delivery_event(None, {"x-github-event": "push"}, payload) is None


def test_an_event_filter_takes_the_event_or_its_actions() -> None:
    assert event_matches("pull_request.opened", "pull_request.opened")
    assert event_matches("pull_request", "pull_request.closed")
    assert not event_matches("pull_request.opened", "pull_request.closed")
    assert not event_matches("pull_request", "pull_request_review.submitted")
    # Salesforce names the sObject only; the trigger's event may also name the rule's change.
    assert event_matches("Account", "Account", "salesforce")
    assert event_matches("opportunity.closed_won", "Opportunity", "Salesforce")
    assert not event_matches("opportunity", "OpportunityLineItem", "salesforce")
    assert not event_matches("account", "Contact", "salesforce")
    assert not event_matches("opportunity.closed_won", "Opportunity")


def test_handshakes_are_answered_only_for_their_provider() -> None:
    verification = {"type": "url_verification", "challenge": "c-1", "token": "t"}
    answered = handshake("slack", verification)
    assert answered is not None and answered[1] == {"challenge": "c-1"}
    assert handshake("github", verification) is None
    assert handshake("slack", {"type": "event_callback"}) is None
    ping = handshake("Discord", {"type": 1, "id": "1", "application_id": "2"})
    assert ping is not None and ping[1] == {"type": 1} and "PING" in ping[0]
    assert handshake("discord", {"type": 2}) is None
    assert handshake("discord", {"type": True}) is None
    assert handshake("stripe", {"type": 1}) is None


def test_a_webhook_naming_an_unverified_provider_is_warned() -> None:
    definition = flow(
        [
            node("d", "trigger", triggerType="webhook", webhookProvider="telegram"),
            node("g", "trigger", triggerType="webhook", provider="GitHub", event="push"),
            node("m", "trigger", triggerType="manual", provider="zendesk"),
            node("s", "trigger", triggerType="event", provider="zendesk", event="ticket"),
            node("c", "trigger", triggerType="webhook", webhookProvider="Discord"),
            node("f", "trigger", triggerType="event", provider="salesforce", event="Account"),
            node("o", "output", outputName="x", value="1"),
        ],
        [("d", "o"), ("g", "o"), ("m", "o"), ("s", "o"), ("c", "o"), ("f", "o")],
    )
    warned = {
        (p.node_id, p.field)
        for p in validate(definition)
        if p.code == "unverified_hook_provider" and p.severity == "warning"
    }
    assert warned == {("d", "webhookProvider"), ("s", "provider")}


def test_a_webhook_naming_an_unverified_provider_and_an_event_is_told_it_is_not_filtered() -> None:
    definition = flow(
        [
            node("c", "trigger", triggerType="webhook", provider="circleci", event="job.failed"),
            node("o", "output", outputName="x", value="1"),
        ],
        [("c", "o")],
    )
    (said,) = validate(definition)
    assert (said.code, said.severity, said.node_id, said.field) == (
        "unverified_hook_provider",
        "warning",
        "c",
        "provider",
    )
    assert "'job.failed' is not filtered unless" in said.message
    assert "X-FlowMaestro-Event" in said.message


@pytest.mark.parametrize(
    ("provider", "event", "why"),
    [
        ("discord", "message", "never delivers 'message'"),
        ("Discord", "message_create", "never delivers 'message_create'"),
        ("discord", "ping", "only to check the URL"),
        ("slack", "url_verification", "only to check the URL"),
        ("stripe", "Invoice.Paid", "lower case"),
        ("github", "Pull Request", "lower case"),
        ("shopify", "Orders/Create", "lower case"),
    ],
)
def test_an_event_the_provider_never_delivers_is_warned_on_its_field(
    provider: str, event: str, why: str
) -> None:
    definition = flow(
        [
            node("t", "trigger", triggerType="webhook", provider=provider, event=event),
            node("o", "output", outputName="x", value="1"),
        ],
        [("t", "o")],
    )
    (said,) = validate(definition)
    assert (said.code, said.severity, said.node_id, said.field) == (
        "undeliverable_trigger_event",
        "warning",
        "t",
        "event",
    )
    assert why in said.message and "never starts the workflow" in said.message


@pytest.mark.parametrize(
    ("provider", "event"),
    [
        ("discord", "application_command"),
        ("discord", "application_command.hello"),
        ("discord", "message_component.Approve Button"),  # a custom_id is the app's own
        ("discord", "application_command_autocomplete.search"),
        ("discord", "modal_submit"),
        ("discord", "interaction_9"),
        ("github", "pull_request.opened"),
        ("stripe", "customer.subscription.created"),
        ("slack", "app_mention"),
        ("shopify", "orders/create"),
        ("salesforce", "Opportunity.closed_won"),  # compared in any case
        ("typeform", "form.submitted"),  # not filtered
        ("telegram", "Message"),  # unverified: told so, not this
    ],
)
def test_an_event_the_provider_can_deliver_is_not_warned(provider: str, event: str) -> None:
    assert undeliverable_event(provider, event) is None


def test_discord_event_heads_are_the_interaction_types_delivery_event_names() -> None:
    for kind, name in DISCORD_INTERACTIONS.items():
        named = delivery_event(
            "discord", {}, {"type": kind, "data": {"name": "x", "custom_id": "x"}}
        )
        assert named is not None and named.split(".", 1)[0] == name
        assert undeliverable_event("discord", named) is None or name == "ping"


def test_providers_put_their_delivery_ids_in_the_body() -> None:
    assert provider_delivery_id("stripe", {"id": "evt_1", "type": "invoice.paid"}) == "evt_1"
    slack_event = {"type": "event_callback", "event_id": "Ev08MFMKH6", "event": {}}
    assert provider_delivery_id("Slack", slack_event) == "Ev08MFMKH6"
    assert provider_delivery_id("slack", {"command": "/weather", "text": "x"}) is None
    typeform_body = {"event_id": "01EK4R5PFZZP6C8H14RTP4YW6C", "event_type": "form_response"}
    assert provider_delivery_id("typeform", typeform_body) == "01EK4R5PFZZP6C8H14RTP4YW6C"
    assert provider_delivery_id("stripe", {"id": 7}) is None  # not an id a provider sends
    assert provider_delivery_id("github", {"id": "x"}) is None  # GitHub's is a header


# -- Discord (Ed25519) --------------------------------------------------------------------------

INTERACTION = json.dumps(
    {"id": "1234567890", "application_id": "42", "type": 2, "token": "t", "data": {"name": "hello"}}
).encode()


def check_discord(
    headers: dict[str, str],
    body: bytes = INTERACTION,
    connection: ConnectionSettings | None = DISCORD_CONNECTION,
    tolerance: float = 300.0,
) -> None:
    PROVIDERS["discord"].check(Keys(SECRET, connection), Delivery(headers, body, NOW, tolerance))


def test_discord_verifies_the_ed25519_signature_over_timestamp_and_body() -> None:
    check_discord(discord(PRIVATE_KEY, INTERACTION, int(NOW)))
    tampered = INTERACTION.replace(b"hello", b"hellp")
    with pytest.raises(BadSignature, match="X-Signature-Ed25519"):
        check_discord(discord(PRIVATE_KEY, INTERACTION, int(NOW)), body=tampered)
    with pytest.raises(BadSignature, match="X-Signature-Ed25519"):  # another application's key
        check_discord(discord(Ed25519PrivateKey.generate(), INTERACTION, int(NOW)))
    # The timestamp is signed too: another one with the same signature is refused.
    moved = {
        **discord(PRIVATE_KEY, INTERACTION, int(NOW)),
        "x-signature-timestamp": str(int(NOW) - 1),
    }
    with pytest.raises(BadSignature):
        check_discord(moved)
    for garbage in ("", "zz", "00" * 64, "\u00e9" * 128):
        with pytest.raises(BadSignature):
            check_discord(
                {**discord(PRIVATE_KEY, INTERACTION, int(NOW)), "x-signature-ed25519": garbage}
            )


def test_discord_refuses_a_timestamp_beyond_the_platform_tolerance() -> None:
    for t in (int(NOW) - 301, int(NOW) + 301):
        with pytest.raises(BadSignature, match="X-Signature-Timestamp"):
            check_discord(discord(PRIVATE_KEY, INTERACTION, t))
    check_discord(discord(PRIVATE_KEY, INTERACTION, int(NOW) - 290))
    check_discord(discord(PRIVATE_KEY, INTERACTION, int(NOW) - 3000), tolerance=3600.0)
    unstamped = discord(PRIVATE_KEY, INTERACTION, int(NOW))
    del unstamped["x-signature-timestamp"]
    with pytest.raises(BadSignature):
        check_discord(unstamped)


def test_discord_key_comes_from_the_connection_never_the_hook_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = discord(PRIVATE_KEY, INTERACTION, int(NOW))
    monkeypatch.setenv("DISCORD_PUBLIC_KEY", public_hex(PRIVATE_KEY))
    by_variable = ConnectionSettings.model_validate({"public_key_env": "DISCORD_PUBLIC_KEY"})
    check_discord(headers, connection=by_variable)
    fallback = ConnectionSettings.model_validate({"signing_secret": public_hex(PRIVATE_KEY)})
    check_discord(headers, connection=fallback)
    with pytest.raises(BadSignature, match="no public_key"):
        check_discord(headers, connection=None)
    with pytest.raises(BadSignature, match="not 64 hex digits"):
        check_discord(headers, connection=ConnectionSettings.model_validate({"public_key": "abc"}))


def test_discord_interactions_name_their_events_and_ids() -> None:
    command = json.loads(INTERACTION)
    assert delivery_event("discord", {}, command) == "application_command.hello"
    assert event_matches("application_command", "application_command.hello")
    button = {"type": 3, "data": {"custom_id": "approve"}}
    assert delivery_event("discord", {}, button) == "message_component.approve"
    assert delivery_event("discord", {}, {"type": 5, "data": {}}) == "modal_submit"
    assert delivery_event("discord", {}, {"type": 9}) == "interaction_9"
    assert delivery_event("discord", {}, {"text": "no type"}) is None
    assert provider_delivery_id("discord", command) == "1234567890"
    assert provider_delivery_id("discord", {"id": "x"}) is None  # not an interaction


# -- Salesforce outbound messages (SOAP) ---------------------------------------------------------

ORG_ID = "00D000000000062EAA"  # 18 characters, as Salesforce sends it
ACCOUNTS = (
    ("04l000000000001AAA", "001000000000001AAA", "Acme"),
    ("04l000000000002AAA", "001000000000002AAA", "Globex"),
)


def outbound_message(
    org: str = ORG_ID, accounts: tuple[tuple[str, str, str], ...] = ACCOUNTS
) -> bytes:
    """An outbound message as Salesforce documents it: one envelope, up to 100 notifications."""
    notifications = "".join(
        f"""
   <Notification>
    <Id>{notification}</Id>
    <sObject xsi:type="sf:Account" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
     <sf:Id>{record}</sf:Id>
     <sf:Industry xsi:nil="true"/>
     <sf:Name>{name}</sf:Name>
    </sObject>
   </Notification>"""
        for notification, record, name in accounts
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>{org}</OrganizationId>
   <ActionId>04k000000000008AAA</ActionId>
   <SessionId>00D000000000062!AQcAQH0dMHZfz972Szmpkb58urFRkgeBGsxL</SessionId>
   <EnterpriseUrl>https://acme.my.salesforce.com/services/Soap/c/62.0/00D000000000062</EnterpriseUrl>
   <PartnerUrl>https://acme.my.salesforce.com/services/Soap/u/62.0/00D000000000062</PartnerUrl>{notifications}
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>
""".encode()


SALESFORCE_CONNECTION = ConnectionSettings.model_validate({"organization_id": ORG_ID})
XML = {"content-type": "text/xml; charset=utf-8", "soapaction": '""'}
# A "billion laughs" inside an otherwise valid message (kept small: a parser that expanded it
# would accept the delivery, which is what the tests would catch).
LAUGHS = b"""<!DOCTYPE soapenv:Envelope [<!ENTITY lol "lol">
<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
"""
BOMB = (
    outbound_message()
    .replace(b"?>\n", b"?>\n" + LAUGHS, 1)
    .replace(b"<sf:Name>Acme</sf:Name>", b"<sf:Name>&lol3;</sf:Name>")
)
EXTERNAL = (
    b"""<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]><e>&x;</e>"""
)


def check_salesforce(
    body: bytes = outbound_message(),
    query: dict[str, str] | None = None,
    connection: ConnectionSettings | None = SALESFORCE_CONNECTION,
) -> None:
    given = {"token": SECRET} if query is None else query
    delivery = Delivery(XML, body, NOW, 300.0, given)
    PROVIDERS["salesforce"].check(Keys(SECRET, connection), delivery)


def test_salesforce_outbound_message_with_token_and_organization_is_accepted() -> None:
    check_salesforce()
    fifteen = ConnectionSettings.model_validate({"organization_id": ORG_ID[:15]})
    check_salesforce(connection=fifteen)  # the id as Setup shows it


def test_salesforce_refuses_another_organization_or_a_missing_or_wrong_token() -> None:
    with pytest.raises(BadSignature, match="OrganizationId"):
        check_salesforce(outbound_message(org="00D000000000099EAA"))
    with pytest.raises(BadSignature, match="OrganizationId"):  # same 15 characters, other suffix
        check_salesforce(
            connection=ConnectionSettings.model_validate({"organization_id": ORG_ID[:15] + "XYZ"})
        )
    for prefix in ("00D", ORG_ID[:14], ""):  # only the whole 15- or 18-character id
        with pytest.raises(BadSignature):
            check_salesforce(
                connection=ConnectionSettings.model_validate({"organization_id": prefix})
            )
    for query in ({}, {"token": "not-the-secret"}, {"token": ""}, {"secret": SECRET}):
        with pytest.raises(BadSignature, match="token"):
            check_salesforce(query=query)
    with pytest.raises(BadSignature, match="organization_id"):
        check_salesforce(connection=None)


@pytest.mark.parametrize(
    "body",
    [
        b"<soapenv:Envelope",  # malformed
        b"",
        BOMB,
        EXTERNAL,
        b'<?xml version="1.0" encoding="no-such-encoding"?><a/>',
        b"<order><id>1</id></order>",  # well-formed, not an outbound message
        outbound_message(accounts=()),
        outbound_message().replace(b"<OrganizationId>00D000000000062EAA</OrganizationId>", b""),
    ],
    ids=[
        "malformed",
        "empty",
        "entity-bomb",
        "external-entity",
        "encoding",
        "other-xml",
        "no-notification",
        "no-org",
    ],
)
def test_unreadable_xml_is_a_400_once_the_token_is_right(body: bytes) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_salesforce(body)
    assert refused.value.status == 400
    with pytest.raises(BadSignature):  # without the token the XML is not even parsed
        check_salesforce(body, query={})


def test_an_outbound_message_becomes_json_without_its_session() -> None:
    message = salesforce_message(outbound_message())
    assert message == {
        "organizationId": ORG_ID,
        "actionId": "04k000000000008AAA",
        "enterpriseUrl": "https://acme.my.salesforce.com/services/Soap/c/62.0/00D000000000062",
        "partnerUrl": "https://acme.my.salesforce.com/services/Soap/u/62.0/00D000000000062",
        "notificationIds": ["04l000000000001AAA", "04l000000000002AAA"],
        "sObjects": [
            {"attributes": {"type": "Account"}, "Id": record, "Industry": None, "Name": name}
            for _, record, name in ACCOUNTS
        ],
    }
    assert "AQcAQH0dMHZfz972Szmpkb58" not in json.dumps(message)
    assert delivery_event("salesforce", {}, message) == "Account"
    assert provider_delivery_id("salesforce", message) == "04l000000000001AAA,04l000000000002AAA"
    reordered = {**message, "notificationIds": message["notificationIds"][::-1]}
    assert provider_delivery_id("salesforce", reordered) == provider_delivery_id(
        "salesforce", message
    )
    many = {**message, "notificationIds": [f"04l{n:015d}" for n in range(100)]}
    many_id = provider_delivery_id("salesforce", many)
    assert many_id is not None and many_id.startswith("sha256:") and len(many_id) < 80


def test_the_salesforce_acknowledgement_is_what_its_wsdl_expects() -> None:
    from defusedxml import ElementTree

    root = ElementTree.fromstring(SALESFORCE_ACK)
    ack = root.find(
        "{http://schemas.xmlsoap.org/soap/envelope/}Body/"
        "{http://soap.sforce.com/2005/09/outbound}notificationsResponse/"
        "{http://soap.sforce.com/2005/09/outbound}Ack"
    )
    assert ack is not None and ack.text == "true"


@pytest.mark.parametrize(
    ("kind", "answer"),
    [
        (2, {"type": 5}),  # a slash command: deferred reply
        (3, {"type": 6}),  # a button or menu: deferred update
        (4, {"type": 8, "data": {"choices": []}}),  # autocomplete cannot be deferred
        (5, {"type": 5}),  # a modal submitted
        (1, None),  # PING is the handshake's
    ],
)
def test_a_discord_interaction_taken_is_answered_deferred(kind: int, answer: object) -> None:
    assert interaction_answer("Discord", {"type": kind}) == answer
    assert interaction_answer("slack", {"type": kind}) is None
