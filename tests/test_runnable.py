"""`flowmaestro runnable`: what this deployment cannot run, and what it lacks for the rest."""

import json
from pathlib import Path

import pytest

from flowmaestro_dagster.cli import main
from flowmaestro_dagster.control.runnable import check_definition
from flowmaestro_dagster.nodes.connectors import ConnectorRegistry, builtin_registry
from flowmaestro_dagster.settings import (
    ConnectionSettings,
    LLMProvider,
    LLMSettings,
    Settings,
    get_settings,
)
from tests.builders import chain, node

LLM_FLOW = chain(
    node("in", "input", inputName="topic"),
    node("ask", "llm", provider="acme-ai", model="m1", prompt="{{topic}}"),
    node("out", "output", outputName="answer", value="{{ask.text}}"),
)


def _report(definition: object, settings: Settings, registry: ConnectorRegistry | None = None):
    return check_definition("wf.json", json.dumps(definition), settings, registry=registry)


def test_an_llm_node_needs_its_provider_until_one_is_configured() -> None:
    report = _report(LLM_FLOW, Settings())
    assert not report.runnable and report.valid and not report.blockers
    (need,) = report.needs
    assert (need.node_id, need.kind, need.name) == ("ask", "llm_provider", "acme-ai")
    assert "FLOWMAESTRO_LLM__PROVIDERS__ACME_AI__BASE_URL" in need.how

    configured = Settings(
        llm=LLMSettings(providers={"acme_ai": LLMProvider(base_url="http://llm.local/v1")})
    )
    assert _report(LLM_FLOW, configured).runnable


def test_a_provider_without_a_connector_blocks_and_a_missing_connection_is_a_need() -> None:
    definition = chain(
        node("in", "input", inputName="x"),
        node("a", "integration", provider="activecampaign", operation="doThing"),
        node("b", "integration", provider="slack", operation="sendMessage", parameters={}),
    )
    report = _report(definition, Settings(), builtin_registry())
    assert [(b.node_id, b.reason) for b in report.blockers] == [
        ("a", "no connector for provider activecampaign (operation doThing)")
    ]
    assert [(n.node_id, n.kind, n.name) for n in report.needs] == [("b", "connection", "slack")]

    with_slack = Settings(connections={"slack": ConnectionSettings(url="https://hooks.example")})
    report = _report(definition, with_slack, builtin_registry())
    assert not report.needs and len(report.blockers) == 1


def test_a_connection_in_the_platform_store_satisfies_the_need() -> None:
    definition = chain(node("b", "integration", provider="slack", operation="sendMessage"))
    asked: list[tuple[str | None, str]] = []

    def has_connection(connection_id: str | None, provider: str) -> bool:
        asked.append((connection_id, provider))
        return True

    report = check_definition(
        "wf.json",
        json.dumps(definition),
        Settings(),
        registry=builtin_registry(),
        has_connection=has_connection,
    )
    assert report.runnable and asked == [(None, "slack")]


def test_a_node_type_without_an_executor_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowmaestro_dagster.control import runnable
    from flowmaestro_dagster.nodes.unavailable import execute_unavailable

    real = runnable.get_executor
    monkeypatch.setattr(
        runnable,
        "get_executor",
        lambda t: execute_unavailable if t == "chartGeneration" else real(t),
    )
    definition = chain(node("c", "chartGeneration", chartType="bar", data=[1]))
    report = _report(definition, Settings(), ConnectorRegistry())
    assert [(b.node_id, b.reason) for b in report.blockers] == [
        ("c", "no executor for node type 'chartGeneration'")
    ]
    assert not report.needs  # a blocked node's needs are beside the point


def test_an_invalid_definition_is_reported_not_raised() -> None:
    report = check_definition("bad.json", b"{not json", Settings())
    assert not report.valid and not report.runnable and report.errors


def test_cli_json_lines_and_exit_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "llm.json").write_text(json.dumps(LLM_FLOW))
    plain = chain(node("in", "input", inputName="x"), node("out", "output", value="{{x}}"))
    (tmp_path / "plain.json").write_text(json.dumps(plain))
    get_settings.cache_clear()
    try:
        assert main(["runnable", "--json", str(tmp_path)]) == 1
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        by_file = {Path(r["file"]).name: r for r in lines}
        assert by_file["plain.json"]["runnable"] is True
        assert by_file["llm.json"]["runnable"] is False
        assert by_file["llm.json"]["needs"][0]["name"] == "acme-ai"

        assert main(["runnable", str(tmp_path / "plain.json")]) == 0
        assert "1 of 1 workflow(s) can run" in capsys.readouterr().out

        monkeypatch.setenv("FLOWMAESTRO_LLM__PROVIDERS__ACME_AI__BASE_URL", "http://llm.local/v1")
        get_settings.cache_clear()
        assert main(["runnable", str(tmp_path)]) == 0
    finally:
        get_settings.cache_clear()
    assert main(["runnable", str(tmp_path / "missing.json")]) == 2


def test_a_required_parameter_left_empty_is_a_need() -> None:
    definition = chain(
        node("page", "integration", provider="notion", operation="createPage", parameters={}),
        node(
            "ok",
            "integration",
            provider="notion",
            operation="createPage",
            parameters={"databaseId": "{{db}}", "title": "x"},
        ),
    )
    report = check_definition(
        "wf.json", json.dumps(definition), Settings(), has_connection=lambda *_: True
    )
    needs = [(n.node_id, n.kind, n.name) for n in report.needs]
    assert needs == [("page", "parameter", "parameters.parent_id")]
    assert "parameters.databaseId" in report.needs[0].how  # the builder's spelling is named too
