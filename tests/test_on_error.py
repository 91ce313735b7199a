"""`onError` strategies, error edges and failure notifications, through compiled jobs."""

import json
from collections.abc import Sequence
from typing import Any

from pydantic import SecretStr

from flowmaestro_dagster.compile.naming import labelled_aliases
from flowmaestro_dagster.compile.validation import validate
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.settings import ConnectionSettings, HttpSettings, Settings
from flowmaestro_dagster.testing import EchoServer, run_workflow
from tests.conftest import flow

BROKEN = "{not json"


def parse(on_error: Any = None, node_id: str = "parse", **extra: Any) -> dict[str, Any]:
    """A node that fails (for good: a configuration error is never retried) on bad JSON."""
    node = {"id": node_id, "type": "transform", "operation": "parseJSON", "inputData": "{{raw}}"}
    if on_error is not None:
        node["onError"] = on_error
    return {**node, **extra}


def template(node_id: str, text: str) -> dict[str, Any]:
    return {"id": node_id, "type": "transform", "transformType": "template", "template": text}


def chain(
    on_error: Any,
    *,
    more_nodes: Sequence[dict[str, Any]] = (),
    more_edges: Sequence[tuple[str, ...]] = (),
) -> dict[str, Any]:
    """in → parse → next → out, with `onError` on parse."""
    return flow(
        [
            {"id": "in", "type": "input", "inputName": "raw"},
            parse(on_error, outputVariable="data"),
            template("next", "next saw {{data}}"),
            {"id": "out", "type": "output", "outputName": "said", "value": "{{next.result}}"},
            *more_nodes,
        ],
        [("in", "parse"), ("parse", "next"), ("next", "out"), *more_edges],
    )


def test_fail_is_the_default_and_fails_the_run() -> None:
    result = run_workflow(chain(None), {"raw": BROKEN})
    assert result.status == "failed"
    assert result.nodes["parse"].status == "failed" and result.nodes["parse"].attempts == 1
    assert result.nodes["next"].status in ("skipped", "not_run")
    explicit = run_workflow(chain({"strategy": "fail"}), {"raw": BROKEN})
    assert explicit.status == "failed"


def test_continue_gives_null_and_downstream_runs() -> None:
    result = run_workflow(chain({"strategy": "continue"}), {"raw": BROKEN})
    assert result.status == "succeeded"
    node = result.nodes["parse"]
    assert node.status == "succeeded" and node.output == {"data": None}
    assert "not valid JSON" in (node.error or "")  # it recovered, and says from what
    assert result.outputs == {"said": "next saw null"}


def test_continue_does_nothing_when_the_node_succeeds() -> None:
    result = run_workflow(chain({"strategy": "continue"}), {"raw": '{"a": 1}'})
    assert result.status == "succeeded" and result.nodes["parse"].error is None
    assert result.outputs == {"said": 'next saw {"a": 1}'}


def test_fallback_uses_the_fallback_value() -> None:
    on_error = {"strategy": "fallback", "fallbackValue": {"a": "default"}}
    result = run_workflow(chain(on_error), {"raw": BROKEN})
    assert result.status == "succeeded"
    assert result.nodes["parse"].output == {"data": {"a": "default"}}
    assert result.outputs == {"said": 'next saw {"a": "default"}'}


def test_goto_runs_the_goto_node_instead_of_the_normal_successors() -> None:
    definition = chain(
        {"strategy": "goto", "gotoNode": "apology"},
        more_nodes=[
            template("apology", "could not parse: {{parse.error.message}}"),
            {"id": "sorry", "type": "output", "outputName": "sorry", "value": "{{apology.result}}"},
        ],
        more_edges=[("apology", "sorry")],
    )
    failed = run_workflow(definition, {"raw": BROKEN})
    assert failed.status == "succeeded"
    assert failed.nodes["parse"].status == "failed"
    assert failed.nodes["next"].status == "skipped" and failed.nodes["out"].status == "skipped"
    assert failed.nodes["apology"].status == "succeeded"
    assert failed.outputs["sorry"].startswith("could not parse: parseJSON: input is not valid")
    fine = run_workflow(definition, {"raw": "[1]"})
    assert fine.nodes["apology"].status == "skipped" and fine.outputs == {"said": "next saw [1]"}


def test_an_error_edge_leads_to_a_fallback_node_only_on_failure() -> None:
    definition = chain(
        None,
        more_nodes=[template("fb", "{{parse.error.type}} after {{parse.error.attempts}}")],
        more_edges=[("parse", "fb", "error"), ("fb", "out")],
    )
    failed = run_workflow(definition, {"raw": BROKEN})
    assert failed.status == "succeeded"
    assert failed.nodes["next"].status == "skipped"
    assert failed.nodes["fb"].output == {"result": "NodeConfigurationError after 1"}
    assert failed.outputs == {"said": "{{next.result}}"}  # the OR-join ran after the fallback
    fine = run_workflow(definition, {"raw": "[2]"})
    assert fine.nodes["fb"].status == "skipped" and fine.outputs == {"said": "next saw [2]"}


def test_continue_with_an_error_edge_runs_both_paths() -> None:
    definition = chain(
        {"strategy": "continue"},
        more_nodes=[template("fb", "also told")],
        more_edges=[("parse", "fb", "error")],
    )
    result = run_workflow(definition, {"raw": BROKEN})
    assert result.nodes["next"].status == "succeeded" and result.nodes["fb"].status == "succeeded"


def test_a_join_after_an_unhandled_failure_still_does_not_run() -> None:
    definition = flow(
        [
            {"id": "in", "type": "input", "inputName": "raw"},
            parse(None),
            template("other", "fine"),
            template("join", "joined"),
        ],
        [("in", "parse"), ("in", "other"), ("parse", "join"), ("other", "join")],
    )
    result = run_workflow(definition, {"raw": BROKEN})
    assert result.status == "failed" and result.nodes["join"].status in ("skipped", "not_run")


def test_retries_come_before_on_error(echo: EchoServer) -> None:
    definition = flow(
        [
            {
                "id": "call",
                "type": "http",
                "url": echo.url("/status/503"),
                "retry": {"maxAttempts": 3, "minDelayMs": 0},
                "onError": {"strategy": "fallback", "fallbackValue": "cached"},
            },
            template("use", "got {{call.result}}"),
        ],
        [("call", "use")],
    )
    result = run_workflow(definition, {}, settings=loopback())
    assert result.status == "succeeded" and len(echo.requests) == 3
    assert result.nodes["call"].attempts == 3
    assert result.nodes["use"].output == {"result": "got cached"}


def test_on_error_inside_a_loop_body_applies_per_item() -> None:
    definition = flow(
        [
            {"id": "in", "type": "input", "inputName": "rows", "inputType": "json"},
            {"id": "loop", "type": "loop", "items": "{{rows}}", "itemVariable": "raw"},
            parse({"strategy": "fallback", "fallbackValue": "bad row"}, outputVariable="row"),
            template("fixed", "{{parse.error.message}}"),
            {"id": "out", "type": "output", "outputName": "rows", "value": "{{parse}}"},
        ],
        [("in", "loop"), ("loop", "parse"), ("parse", "out"), ("parse", "fixed", "error")],
    )
    result = run_workflow(definition, {"rows": ['{"a": 1}', BROKEN, "[3]"]})
    assert result.status == "succeeded", result.nodes
    assert result.nodes["parse"].output == [{"row": {"a": 1}}, {"row": "bad row"}, {"row": [3]}]
    fixed = result.nodes["fixed"].output
    assert fixed[0] is None and fixed[2] is None and "not valid JSON" in fixed[1]["result"]


# -- notifications ---------------------------------------------------------------------------------


def loopback(**connections: ConnectionSettings) -> Settings:
    return Settings().model_copy(
        update={"http": HttpSettings(allow_loopback=True), "connections": connections}
    )


def test_notify_true_posts_to_the_notify_connection(echo: EchoServer) -> None:
    config = loopback(notify=ConnectionSettings(url=SecretStr(echo.url("/hooks/secret-path"))))
    definition = chain({"strategy": "continue", "notify": True})
    result = run_workflow(definition, {"raw": BROKEN}, settings=config)
    assert result.status == "succeeded"
    [request] = echo.requests
    assert request.method == "POST" and request.path == "/hooks/secret-path"
    body = json.loads(request.text)
    assert body["event"] == "node.failed" and body["nodeId"] == "parse"
    assert body["handledBy"] == "continue" and body["error"]["attempts"] == 1
    assert body["text"].startswith("FlowMaestro: node 'transform' (transform) in workflow 't'")


def test_notify_a_url_and_the_run_still_fails(echo: EchoServer) -> None:
    definition = chain({"notify": echo.url("/alert")})
    result = run_workflow(definition, {"raw": BROKEN}, settings=loopback())
    assert result.status == "failed"
    assert [r.path for r in echo.requests] == ["/alert"]
    assert json.loads(echo.requests[0].text)["handledBy"] == "fail"


def test_a_notification_that_cannot_be_sent_changes_nothing(echo: EchoServer) -> None:
    missing = chain({"strategy": "continue", "notify": "nobody"})
    assert run_workflow(missing, {"raw": BROKEN}, settings=loopback()).status == "succeeded"
    refused = chain({"strategy": "continue", "notify": echo.url("/x")})
    assert run_workflow(refused, {"raw": BROKEN}).status == "succeeded"  # loopback refused
    assert echo.requests == []


def test_no_notification_when_the_node_succeeds(echo: EchoServer) -> None:
    definition = chain({"notify": echo.url("/alert")})
    assert run_workflow(definition, {"raw": "{}"}, settings=loopback()).status == "succeeded"
    assert echo.requests == []


# -- validation and compilation --------------------------------------------------------------------


def codes(definition: dict[str, Any]) -> dict[str, tuple[str | None, str | None]]:
    return {p.code: (p.node_id, p.field) for p in validate(definition)}


def test_a_goto_that_would_create_a_cycle_is_rejected() -> None:
    definition = chain({"strategy": "goto", "gotoNode": "in"})
    assert codes(definition)["error_path_cycle"] == ("parse", "onError.gotoNode")
    self_goto = chain({"strategy": "goto", "gotoNode": "parse"})
    assert codes(self_goto)["error_path_cycle"] == ("parse", "onError.gotoNode")
    assert "cycle" not in codes(definition)


def test_an_error_edge_that_would_create_a_cycle_is_rejected() -> None:
    definition = chain(None, more_edges=[("next", "parse", "error")])
    assert codes(definition)["error_path_cycle"] == ("next", "sourceHandle")


def test_a_goto_downstream_is_fine_and_bad_settings_name_the_field() -> None:
    assert "error_path_cycle" not in codes(chain({"strategy": "goto", "gotoNode": "out"}))
    assert codes(chain({"strategy": "goto", "gotoNode": "nope"}))["invalid_on_error"] == (
        "parse",
        "onError.gotoNode",
    )
    assert codes(chain({"strategy": "retry"}))["invalid_on_error"] == ("parse", "onError.strategy")
    assert codes(chain({"notify": 3}))["invalid_on_error"] == ("parse", "onError.notify")
    assert codes(chain({"strategy": "fallback"}))["fallback_without_value"] == (
        "parse",
        "onError.fallbackValue",
    )


def test_error_handles_are_not_branches_and_add_an_error_output() -> None:
    definition = flow(
        [
            {"id": "c", "type": "conditional", "condition": "1 > 0"},
            template("yes", "y"),
            template("oops", "o"),
        ],
        [("c", "yes", "true"), ("c", "oops", "error")],
    )
    assert not [p for p in validate(definition) if p.severity == "warning"]
    compiled = build_job(definition)
    outputs = set(compiled.job.graph.node_named(compiled.aliases["c"]).definition.output_dict)
    assert outputs == {"result", "true", "false", "error"}
    result = run_workflow(definition, {})
    assert result.nodes["yes"].status == "succeeded" and result.nodes["oops"].status == "skipped"


# -- aliases -----------------------------------------------------------------------------------------


def test_aliases_show_labels_and_adding_a_node_renames_nothing() -> None:
    nodes = [("llm-1", "Generate Reply"), ("in", None), ("x", "Same"), ("y", "Same")]
    first = labelled_aliases(nodes)
    assert first == {
        "llm-1": "generate_reply__llm_1",
        "in": "in",
        "x": "same__x",
        "y": "same__y",
    }
    second = labelled_aliases([*nodes, ("llm_1", "Other"), ("z", "1st step")])
    assert {k: second[k] for k in first} == first
    assert second["z"] == "n_1st_step__z"
    hostile = labelled_aliases(
        [("a", "b__c"), ("b_c__a", None), ("q", "weird   label!!"), ("input", "Input")]
    )
    assert len(set(hostile.values())) == 4 and hostile["q"] == "weird_label__q"
    assert hostile["input"] == "input_"  # Dagster reserves `input`
