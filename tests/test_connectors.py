"""Connectors: registry and entry points, webhook / Slack / SMTP against local servers, the
"no connector configured" failures and warnings, templateOutput, and secrets kept out of runs.
"""

import json
import socket
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from flowmaestro_dagster.compile.validation import validate
from flowmaestro_dagster.errors import (
    ConnectorNotConfiguredError,
    NodeConfigurationError,
    NodeExecutionError,
    TransientNodeError,
)
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes.base import NodeContext
from flowmaestro_dagster.nodes.connectors import (
    ConnectorRegistry,
    ConnectorRequest,
    builtin_registry,
    connector_problems,
    load_entry_points,
    reset_default_registry,
)
from flowmaestro_dagster.nodes.integration import execute_integration, execute_media
from flowmaestro_dagster.settings import HttpSettings, Settings
from flowmaestro_dagster.spec.configs import IntegrationConfig, MediaConfig
from flowmaestro_dagster.spec.parse import parse_workflow
from flowmaestro_dagster.testing import EchoServer, run_workflow
from tests.builders import chain, flow, node

LOOPBACK = HttpSettings(allow_loopback=True)


def _ctx(settings: Settings, inputs: dict[str, Any] | None = None, **config: Any) -> NodeContext:
    return NodeContext(
        node_id="int-1",
        node_type="integration",
        label="Integration",
        config=IntegrationConfig(**config),
        state=ExecutionState.start(inputs or {}),
        services={"settings": settings},
    )


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            {
                "from": envelope.mail_from,
                "to": list(envelope.rcpt_tos),
                "data": envelope.content.decode(),
            }
        )
        return "250 Message accepted"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def smtp() -> Iterator[tuple[_Inbox, int]]:
    """A real SMTP server on 127.0.0.1 that accepts user `mailer` with password `smtp-pw-123`."""

    def authenticate(
        server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login == b"mailer"
            and data.password == b"smtp-pw-123"
        )
        return AuthResult(success=ok, handled=False)

    inbox = _Inbox()
    port = _free_port()
    controller = Controller(
        inbox, hostname="127.0.0.1", port=port, authenticator=authenticate, auth_require_tls=False
    )
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def _smtp_settings(port: int, **extra: Any) -> Settings:
    connection = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "username": "mailer",
        "password": "smtp-pw-123",
        "from_address": "flows@corp.eu",
    }
    return Settings(connections={"email": connection, **extra})


# -- registry and entry points ----------------------------------------------------------------


def test_registry_finds_by_provider_and_operation() -> None:
    registry = builtin_registry()
    assert registry.find("slack", "sendMessage") is not None
    assert registry.find("Slack", "postmessage") is not None  # case-insensitive
    assert registry.find("slack", "uploadFile") is None  # not catalogued (files.uploadV2)
    assert registry.find("webhook", "anything") is not None
    assert registry.find("salesforce", "noSuchOperation") is None  # a provider's own ops only
    assert registry.find("nosuchprovider", "anything") is None
    assert {"email", "http", "slack", "smtp", "webhook"} <= set(registry.providers())


def test_entry_point_distribution_adds_a_connector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny installed distribution declares `flowmaestro.connectors`; nodes then use it."""
    (tmp_path / "acme_fm_plugin.py").write_text(
        textwrap.dedent(
            """
            def register(registry):
                @registry.register("acme-crm", ["createTicket"])
                def create_ticket(request):
                    return {"ticket": "T-1", "subject": request.parameters["subject"]}
            """
        )
    )
    dist = tmp_path / "acme_fm_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-fm-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[flowmaestro.connectors]\nacme = acme_fm_plugin:register\nbroken = acme_fm_plugin:missing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = ConnectorRegistry()
    assert load_entry_points(registry) == ["acme"]  # the broken one is logged and skipped
    assert registry.find("acme-crm", "createTicket") is not None

    reset_default_registry()
    try:
        definition = chain(
            node("in", "input", inputName="topic"),
            node("t", "integration", provider="acme-crm", operation="createTicket", subject="{{topic}}", outputVariable="ticket"),
            react=True,
        )  # fmt: skip
        problems = validate(definition)
        assert not [p for p in problems if p.code == "connector_required"]
        result = run_workflow(definition, {"topic": "printer on fire"})
        assert result.output("t") == {"ticket": {"ticket": "T-1", "subject": "printer on fire"}}
    finally:
        monkeypatch.undo()
        sys.modules.pop("acme_fm_plugin", None)
        reset_default_registry()


# -- webhook -----------------------------------------------------------------------------------


def test_webhook_posts_json_with_rendered_parameters(echo: EchoServer) -> None:
    settings = Settings(http=LOOPBACK)
    ctx = _ctx(
        settings,
        {"lead": {"name": "Ann"}},
        provider="webhook",
        operation="send",
        parameters={
            "url": echo.url("/hook"),
            "method": "POST",
            "event": "lead",
            "lead": "{{lead}}",
        },
        output_variable="sent",
    )
    output = execute_integration(ctx).output["sent"]
    assert output["status"] == 200 and output["ok"] is True
    request = echo.requests[-1]
    assert request.path == "/hook"
    assert json.loads(request.body) == {"event": "lead", "lead": {"name": "Ann"}}


def test_webhook_connection_headers_and_signature(
    echo: EchoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_SIGNING", "sign-me-please")
    settings = Settings(
        http=LOOPBACK,
        connections={
            "partner": {
                "connector": "webhook",
                "url": echo.url("/partner"),
                "headers": {"Authorization": "Bearer tok-1"},
                "signing_secret_env": "HOOK_SIGNING",
            }
        },
    )
    execute_integration(
        _ctx(
            settings,
            provider="partner",
            operation="notify",
            connection_id="partner",
            parameters={"body": {"x": 1}},
        )
    )
    request = echo.requests[-1]
    assert request.headers["authorization"] == "Bearer tok-1"
    assert request.headers["x-flowmaestro-signature"].startswith("sha256=")


def test_webhook_errors_retry_or_fail_and_the_guard_applies(echo: EchoServer) -> None:
    settings = Settings(http=LOOPBACK)
    with pytest.raises(TransientNodeError, match="answered 503") as caught:
        execute_integration(
            _ctx(
                settings,
                provider="webhook",
                parameters={"url": echo.url("/status/503?retry_after=7")},
            )
        )
    assert caught.value.retry_after_seconds == 7
    with pytest.raises(NodeExecutionError, match="answered 404"):
        execute_integration(
            _ctx(settings, provider="http", parameters={"url": echo.url("/status/404")})
        )
    with pytest.raises(NodeConfigurationError, match="loopback"):
        execute_integration(
            _ctx(Settings(), provider="webhook", parameters={"url": echo.url("/x")})
        )


# -- Slack -------------------------------------------------------------------------------------


def test_slack_posts_to_the_connection_webhook(
    echo: EchoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_SALES_URL", echo.url("/services/T0/B0/secret-path-123"))
    settings = Settings(http=LOOPBACK, connections={"slack": {"url_env": "SLACK_SALES_URL"}})
    ctx = _ctx(
        settings,
        {"name": "Ann"},
        provider="slack",
        operation="sendMessage",
        parameters={"channel": "#sales", "text": "New lead: {{name}}"},
    )
    output = execute_integration(ctx).output
    assert output == {"ok": True, "status": 200, "channel": "#sales", "text": "New lead: Ann"}
    assert json.loads(echo.requests[-1].body) == {"text": "New lead: Ann"}


def test_slack_url_never_inline_and_never_shown(
    echo: EchoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(http=LOOPBACK)
    with pytest.raises(NodeConfigurationError, match="named connection"):
        execute_integration(
            _ctx(
                settings,
                provider="slack",
                operation="sendMessage",
                parameters={"webhookUrl": echo.url("/x"), "text": "hi"},
            )
        )
    with pytest.raises(ConnectorNotConfiguredError, match="no Slack webhook configured"):
        execute_integration(
            _ctx(settings, provider="slack", operation="sendMessage", parameters={"text": "hi"})
        )
    monkeypatch.setenv("SLACK_URL", echo.url("/status/500?key=secret-path-456"))
    settings = Settings(http=LOOPBACK, connections={"slack": {"url_env": "SLACK_URL"}})
    with pytest.raises(TransientNodeError) as caught:
        execute_integration(
            _ctx(settings, provider="slack", operation="postMessage", parameters={"text": "hi"})
        )
    assert "secret-path-456" not in str(caught.value) and "secret-path-456" not in json.dumps(
        caught.value.details
    )


# -- email -------------------------------------------------------------------------------------


def test_email_over_smtp_with_login(smtp: tuple[_Inbox, int]) -> None:
    inbox, port = smtp
    ctx = _ctx(
        _smtp_settings(port),
        {"who": "ann@corp.eu"},
        provider="email",
        operation="sendEmail",
        parameters={
            "to": "{{who}}, bo@corp.eu",
            "subject": "Hello {{who}}",
            "body": "Plain",
            "html": "<b>Rich</b>",
        },
    )
    output = execute_integration(ctx).output
    assert output["accepted"] == ["ann@corp.eu", "bo@corp.eu"] and output["rejected"] == []
    message = inbox.messages[-1]
    assert message["from"] == "flows@corp.eu" and message["to"] == ["ann@corp.eu", "bo@corp.eu"]
    assert "Subject: Hello ann@corp.eu" in message["data"] and "<b>Rich</b>" in message["data"]


def test_gmail_node_served_by_smtp_connection(smtp: tuple[_Inbox, int]) -> None:
    inbox, port = smtp
    settings = _smtp_settings(
        port,
        gmail={
            "connector": "smtp",
            "host": "127.0.0.1",
            "port": port,
            "security": "none",
            "from_address": "me@corp.eu",
        },
    )
    execute_integration(
        _ctx(
            settings,
            provider="gmail",
            operation="sendEmail",
            parameters={"to": "ann@corp.eu", "subject": "s", "body": "b"},
        )
    )
    assert inbox.messages[-1]["from"] == "me@corp.eu"


def test_email_refuses_header_injection_and_bad_credentials(smtp: tuple[_Inbox, int]) -> None:
    _, port = smtp
    with pytest.raises(NodeConfigurationError, match="invalid email header"):
        execute_integration(
            _ctx(
                _smtp_settings(port),
                {"s": "hi\nBcc: victim@x.y"},
                provider="email",
                operation="sendEmail",
                parameters={"to": "a@corp.eu", "subject": "{{s}}"},
            )
        )
    wrong = Settings(
        connections={
            "email": {
                "host": "127.0.0.1",
                "port": port,
                "security": "none",
                "username": "mailer",
                "password": "nope-nope",
                "from_address": "f@corp.eu",
            }
        }
    )
    with pytest.raises(NodeConfigurationError, match="refused the credentials") as caught:
        execute_integration(
            _ctx(wrong, provider="email", operation="sendEmail", parameters={"to": "a@corp.eu"})
        )
    assert "nope-nope" not in str(caught.value)


# -- what stays unconfigured --------------------------------------------------------------------


def test_unconfigured_providers_and_media_types_fail_precisely() -> None:
    with pytest.raises(
        ConnectorNotConfiguredError,
        match=r"no connection for provider hubspot \(operation updateContact\)",
    ):
        execute_integration(_ctx(Settings(), provider="hubspot", operation="updateContact"))
    ctx = NodeContext(
        node_id="a",
        node_type="audioTranscription",
        label="A",
        config=MediaConfig(provider="openai"),
        state=ExecutionState.start({}),
    )
    with pytest.raises(
        ConnectorNotConfiguredError,
        match=r"no connector configured for node type 'audioTranscription' \(provider openai\)",
    ):
        execute_media(ctx)
    with pytest.raises(ConnectorNotConfiguredError, match="no connection named 'conn-9'"):
        execute_integration(
            _ctx(Settings(), provider="slack", operation="sendMessage", connection_id="conn-9")
        )


def test_validate_lists_required_connectors_as_warnings() -> None:
    definition = flow(
        [
            node("in", "input", inputName="x"),
            node("crm", "hubspot", operation="updateContact"),
            node("say", "integration", provider="slack", operation="sendMessage", text="hi"),
            node("ocr", "ocrExtraction", image="{{x}}"),  # the platform runs it: no warning
            node("tpl", "templateOutput", template="x"),
        ],
        [("in", "crm"), ("in", "say"), ("in", "ocr"), ("in", "tpl")],
    )
    warnings = {p.node_id: p for p in validate(definition) if p.code == "connector_required"}
    assert set(warnings) == {"crm"}
    assert "provider hubspot (operation updateContact)" in warnings["crm"].message
    spec, _ = parse_workflow(definition)
    assert spec is not None
    served = Settings(
        connections={"hubspot": {"connector": "webhook", "url": "https://example.com"}}
    )
    assert [p.node_id for p in connector_problems(spec, settings=served)] == []


def test_template_output_renders_variables_and_html() -> None:
    definition = flow(
        [
            node("in", "input", inputName="tpl"),
            node("t", "templateOutput", templateType="handlebars", template="{{tpl}}", variables={"who": "{{name}}"}, outputVariable="filled"),
            node("h", "templateOutput", template="# Hi {{name}}", outputFormat="html", outputName="page"),
        ],
        [("in", "t"), ("in", "h")],
    )  # fmt: skip
    result = run_workflow(definition, {"tpl": "Dear {{who}},", "name": "Ann"})
    assert result.output("t") == {"filled": "Dear Ann,"}
    assert result.output("h") == {"page": "<h1>Hi Ann</h1>\n"}


# -- secrets stay out of the stored run --------------------------------------------------------


def test_secrets_never_reach_run_config_tags_or_event_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, echo: EchoServer, smtp: tuple[_Inbox, int]
) -> None:
    from dagster import instance_for_test
    from dagster._serdes import serialize_value

    from flowmaestro_dagster.engines.jobs import build_job
    from flowmaestro_dagster.engines.local import execute_workflow
    from flowmaestro_dagster.settings import get_settings

    inbox, port = smtp
    slack_secret = "T000/B000/slack-secret-token-42"
    smtp_secret = "smtp-pw-123"
    monkeypatch.setenv("TEST_SLACK_URL", echo.url(f"/services/{slack_secret}"))
    monkeypatch.setenv("TEST_SMTP_PASSWORD", smtp_secret)
    down_secret = "down-secret-token-77"
    monkeypatch.setenv("TEST_SLACK_DOWN", echo.url(f"/status/500?token={down_secret}"))
    monkeypatch.setenv("FLOWMAESTRO_HTTP__ALLOW_LOOPBACK", "true")
    monkeypatch.setenv(
        "FLOWMAESTRO_CONNECTIONS",
        json.dumps(
            {
                "slack": {"url_env": "TEST_SLACK_URL"},
                "slack-down": {"url_env": "TEST_SLACK_DOWN"},
                "email": {
                    "host": "127.0.0.1",
                    "port": port,
                    "security": "none",
                    "username": "mailer",
                    "password_env": "TEST_SMTP_PASSWORD",
                    "from_address": "flows@corp.eu",
                },
            }
        ),
    )
    get_settings.cache_clear()
    definition = flow(
        [
            node("in", "input", inputName="name"),
            node("say", "slack", operation="sendMessage", channel="#x", text="hi {{name}}"),
            node("mail", "integration", provider="email", operation="sendEmail", to="ann@corp.eu", subject="hi {{name}}", body="b"),
            node("fail", "slack", operation="sendMessage", text="x", connectionId="slack-down", retry={"maxAttempts": 1}),
        ],
        [("in", "say"), ("in", "mail"), ("in", "fail")],
    )  # fmt: skip
    (tmp_path / "home").mkdir()
    try:
        with instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
            result = execute_workflow(build_job(definition), {"name": "Ann"}, instance=instance)
            assert (
                result.nodes["say"].status == "succeeded"
                and result.nodes["mail"].status == "succeeded"
            )
            assert result.nodes["fail"].status == "failed"
            assert "answered 500" in (result.nodes["fail"].error or "")
            assert len(inbox.messages) == 1
            # The three nodes run at once (threaded executor): any order of the two posts.
            assert sorted(r.path for r in echo.requests[-2:]) == [
                "/services/" + slack_secret,
                "/status/500",
            ]
            run = instance.get_run_by_id(result.run_id)
            assert run is not None
            stored = [json.dumps(run.run_config, default=str), json.dumps(run.tags)]
            stored += [serialize_value(entry) for entry in instance.all_logs(result.run_id)]
            for text in stored:
                for secret in (slack_secret, smtp_secret, down_secret):
                    assert secret not in text
            for path in (tmp_path / "home").rglob("*"):
                if path.is_file():
                    data = path.read_bytes()
                    for secret in (slack_secret, smtp_secret, down_secret):
                        assert secret.encode() not in data
    finally:
        get_settings.cache_clear()


def test_connector_request_param_picks_the_first_present() -> None:
    request = ConnectorRequest(
        "x", None, {"a": None, "b": 2}, None, None, Settings(), replace(_ctx(Settings()))
    )
    assert request.param("a", "b") == 2 and request.param("c", default=3) == 3
