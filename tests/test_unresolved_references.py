"""No silent wrong results (issue 16, item 6): a `{{reference}}` nothing provides.

`corpus/.../nested-switch.json` "succeeded" with `outputs: {}`: its switch read
`{{input.category}}`, the input node `input` declares only `data`, and the text went to the
switch as written. Now `input` reads as the workflow's inputs (the builder's input node; every
fixture reads its inputs that way), validation warns about references nothing can provide (a
static data-flow check over the graph), and a reference left as written when a node runs is a
warning on the node (its log and a `node.warning` platform event), or its failure when the
workflow or the platform says `unresolvedReferences: error`.
"""

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterEventType, DagsterInstance, instance_for_test

from flowmaestro_dagster.compile.validation import validate
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.engines.local import execute_workflow
from flowmaestro_dagster.lang import templates
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.spec.problems import Problem
from flowmaestro_dagster.tags import EVENT_DATA_METADATA, EVENT_KIND_METADATA
from flowmaestro_dagster.testing import run_workflow
from tests.builders import backend_flow, chain, flow, node

ROOT = Path(__file__).resolve().parents[1]
NESTED_SWITCH = ROOT / "workflows" / "corpus" / "nested-switch.json"
SHARED_CORPUS = ROOT.parent / "shared" / "corpus" / "flowmaestro"
REFERENCE_CODES = {"unresolved_reference", "reference_not_upstream", "invalid_reference"}


def nested_switch() -> dict[str, Any]:
    return json.loads(NESTED_SWITCH.read_text())


def reference_warnings(definition: Any) -> list[Problem]:
    problems = validate(definition)
    assert [p for p in problems if p.code in REFERENCE_CODES and p.severity != "warning"] == []
    return [p for p in problems if p.code in REFERENCE_CODES]


def where(problems: list[Problem]) -> set[tuple[str | None, str | None, str]]:
    return {(p.node_id, p.field, p.code) for p in problems}


# -- what `{{input.category}}` means -------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "ran", "handled"),
    [
        ({"category": "A", "subCategory": "A1"}, "sub_a1", "A1"),
        ({"category": "A", "subCategory": "A2"}, "sub_a2", "A2"),
        ({"category": "b"}, "case_b", "B"),  # cases match case-insensitively
    ],
)
def test_nested_switch_routes_on_the_inputs_it_reads_through_the_input_node(
    inputs: dict[str, str], ran: str, handled: str
) -> None:
    result = run_workflow(nested_switch(), inputs)
    assert result.status == "succeeded"
    branches = {"sub_a1", "sub_a2", "case_b"}
    assert result.ran & branches == {ran}
    assert result.skipped >= branches - {ran}
    assert result.outputs["result"]["matched"] == handled


def test_input_reads_the_inputs_with_the_input_nodes_own_output_on_top() -> None:
    state = ExecutionState.start({"data": "raw", "category": "A"}).with_output(
        "input", 0, {"data": "coerced"}
    )
    assert templates.render("{{input.category}}/{{input.data}}", state) == "A/coerced"
    alone = ExecutionState.start({"category": "A"})  # no node `input`: the inputs themselves
    assert templates.render("{{input.category}}", alone) == "A"
    assert templates.render("{{input.missing}}", alone) == "{{input.missing}}"


def test_trigger_reads_the_trigger_payload_which_is_the_inputs() -> None:
    # corpus/patterns/advanced/zendesk-ticket-intelligence.json: `{{trigger.ticketId}}` of a
    # webhook trigger whose node id is `trigger-1`
    state = ExecutionState.start({"ticketId": "4711"}).with_output(
        "trigger-1", 0, {"ticketId": "4711"}
    )
    assert templates.render("Ticket {{trigger.ticketId}}", state) == "Ticket 4711"
    assert templates.render("{{trigger.missing}}", state) == "{{trigger.missing}}"
    named = ExecutionState.start({"a": 1}).with_output("trigger", 0, {"a": 2})
    assert templates.render("{{trigger.a}}", named) == 2  # a node `trigger` is itself


# -- the static data-flow check ------------------------------------------------------------------


def test_input_names_and_upstream_output_variables_are_no_warning() -> None:
    definition = chain(
        node("in", "input", inputName="topic"),
        node("llm", "llm", provider="openai", model="m", prompt="{{topic}}", outputVariable="s"),
        node("t", "transform", transformType="template", template="{{s.text}} {{llm.text}}"),
        node("out", "output", outputName="o", value="{{t.result}} {{in.topic}} {{inputs.topic}}"),
    )
    assert reference_warnings(definition) == []


def test_a_variable_only_a_later_node_writes_is_flagged_with_node_field_and_variable() -> None:
    definition = chain(
        node("in", "input", inputName="topic"),
        node("early", "transform", transformType="template", template="{{later}} on {{topic}}"),
        node("late", "transform", transformType="template", template="x", outputVariable="later"),
    )
    [problem] = reference_warnings(definition)
    assert (problem.severity, problem.code) == ("warning", "unresolved_reference")
    assert (problem.node_id, problem.field) == ("early", "template")
    assert "'later'" in problem.message and "config.template" in problem.message


def test_a_node_id_reference_to_a_node_that_does_not_run_before() -> None:
    definition = flow(
        [
            node("in", "input", inputName="q"),
            node("a", "http", method="GET", url="https://example.com/{{q}}"),
            node("b", "llm", provider="openai", model="m", prompt="{{a.data}} {{a.status}}"),
        ],
        [("in", "a"), ("in", "b")],
    )
    problems = reference_warnings(definition)  # one a reference
    assert [(p.node_id, p.field, p.code) for p in problems] == [
        ("b", "prompt", "reference_not_upstream")
    ] * 2
    assert "{{a.data}}" in problems[0].message and "{{a.status}}" in problems[1].message


def test_loop_variables_are_seen_in_the_loop_body_only() -> None:
    definition = flow(
        [
            node("in", "input", inputName="xs", inputType="json"),
            node("before", "transform", transformType="template", template="{{x}}"),
            node("loop", "loop", items="{{xs}}", itemVariable="x", outputVariable="done"),
            node("body", "transform", transformType="template", template="{{x.name}} #{{index}}"),
            node("after", "transform", transformType="template", template="{{done}} {{x}}"),
        ],
        [("in", "before"), ("before", "loop"), ("loop", "body", "body"), ("loop", "after", "done")],
    )
    assert where(reference_warnings(definition)) == {
        ("before", "template", "unresolved_reference"),
        ("after", "template", "unresolved_reference"),
    }


def test_a_key_the_input_node_lacks_is_flagged_unless_an_input_declares_it() -> None:
    [problem] = reference_warnings(nested_switch())[:1]
    assert (problem.node_id, problem.field) == ("switch1", "expression")
    assert "{{input.category}}" in problem.message and "'data'" in problem.message
    declared = chain(
        node("input", "input", inputName="task"),
        node("other", "input", inputName="priority"),
        node("t", "transform", transformType="template", template="{{input.task}} {{input.priority}}"),
        node("u", "transform", transformType="template", template="{{other.task}}"),
    )  # fmt: skip
    [other] = reference_warnings(declared)  # `other` is not `input`: its output has `priority`
    assert (other.node_id, other.field) == ("u", "template") and "'priority'" in other.message


def test_a_trigger_or_an_unnamed_input_node_lets_any_input_through() -> None:
    for start in (node("input", "trigger", triggerType="manual"), node("input", "input")):
        definition = chain(
            start,
            node("s", "switch", expression="{{input.category}}", cases=["a"]),
            node("t", "transform", transformType="template", template="{{category}}"),
        )
        assert reference_warnings(definition) == []


def test_a_warning_does_not_stop_a_deploy() -> None:
    compiled = build_job(nested_switch())
    assert {p.code for p in compiled.warnings} >= {"unresolved_reference"}


def test_an_inputs_help_text_is_not_a_reference() -> None:
    definition = chain(
        node("in", "input", inputName="t", description="Paste a template with {{placeholders}}"),
        node("out", "output", outputName="o", value="{{t}}"),
    )
    assert reference_warnings(definition) == []


def test_a_large_graph_s_references_all_resolve() -> None:
    """1,000 nodes, ~5,000 edges, references 3 and 7 nodes up (ancestors through the edges).
    No timed assertion here (speed goals live in bench/): ~0.1 s of CPU when measured."""
    n = 1_000

    def template(i: int) -> str:  # an outputVariable 7 nodes up, a node 3 up, the input
        far = f"{{{{v{i - 7}}}}}" if i > 7 else "{{topic}}"
        near = f"{{{{n{i - 3}.v{i - 3}}}}}" if i > 3 else "{{in.topic}}"
        return f"{far} {near} {{{{topic}}}}"

    nodes = [node("in", "input", inputName="topic")] + [
        node(f"n{i}", "transform", transformType="template", outputVariable=f"v{i}",
             template=template(i))
        for i in range(1, n)
    ]  # fmt: skip
    edges = [("in", "n1")] + [
        (f"n{i}", f"n{j}") for i in range(1, n) for j in range(i + 1, min(i + 6, n))
    ]
    definition = backend_flow(nodes, edges)
    assert len(edges) < 5_000
    problems = validate(definition)
    assert [p for p in problems if p.code in REFERENCE_CODES] == []


# The corpus: every reference warning, each checked by hand to be one nothing can resolve
# (file, node, field, code).
EXPECTED_CORPUS_WARNINGS = {
    # the prompt reads `extractedContent`; its three upstream nodes write pdfContent,
    # ocrContent, wordContent
    ("document-processing/multi-format-document-converter.json", "llm-standardize", "prompt",
     "unresolved_reference"),
    # `{{input.category}}` / `subCategory` / `priority`: the input node declares only `data`
    # (the upstream test mocked the input node's output instead)
    ("fixtures/execution-engine--routing/createnestedswitchdefinition.json", "switch1",
     "expression", "unresolved_reference"),
    ("fixtures/execution-engine--routing/createnestedswitchdefinition.json", "switch2",
     "expression", "unresolved_reference"),
    ("fixtures/execution-engine--routing/createswitchwithchainsdefinition.json", "switch",
     "expression", "unresolved_reference"),
    ("nested-switch.json", "switch1", "expression", "unresolved_reference"),
    ("nested-switch.json", "switch2", "expression", "unresolved_reference"),
    # `approval.approved`: the reviews before it write editorApproval / legalApproval /
    # managerApproval
    ("marketing/content-publishing-approval.json", "conditional-approved", "condition",
     "unresolved_reference"),
    ("operations/contract-review-assistant.json", "conditional-approved", "condition",
     "unresolved_reference"),
    # integration-drive and llm-classify both start from the trigger, side by side
    ("operations/document-approval-flow.json", "llm-classify", "prompt",
     "reference_not_upstream"),
    # `env` is no name the runtime resolves
    ("patterns/basic/research-agent.json", "kb-1", "knowledgeBaseId", "unresolved_reference"),
    # the loop's exit is a join (the voice input joins it), so its body is empty and
    # `chapter` / `chapterIndex` are out of scope where they are read
    ("voice-audio/audiobook-narrator.json", "audioOutput-1", "input", "unresolved_reference"),
    ("voice-audio/audiobook-narrator.json", "shared-memory-store", "key", "unresolved_reference"),
    ("voice-audio/audiobook-narrator.json", "transform-compile", "template",
     "unresolved_reference"),
    # nothing writes `timestamp` (the built-in is `$now`)
    ("voice-audio/voice-message-responder-2.json", "fileWrite-1", "path", "unresolved_reference"),
}  # fmt: skip


def test_every_reference_warning_on_the_corpus_is_a_real_one() -> None:
    files = sorted((ROOT / "workflows" / "corpus").glob("*.json"))
    if SHARED_CORPUS.is_dir():
        files += sorted(SHARED_CORPUS.rglob("*.json"))
    found = set()
    for path in files:
        name = (
            path.relative_to(SHARED_CORPUS).as_posix()
            if path.is_relative_to(SHARED_CORPUS)
            else path.name
        )
        for problem in reference_warnings(json.loads(path.read_text())):
            found.add((name, problem.node_id, problem.field, problem.code))
    if not SHARED_CORPUS.is_dir():
        expected = {w for w in EXPECTED_CORPUS_WARNINGS if "/" not in w[0]}
    else:
        expected = EXPECTED_CORPUS_WARNINGS
    assert found == expected


# -- at run time ---------------------------------------------------------------------------------


def test_a_render_records_what_it_leaves_as_written_and_renders_the_same() -> None:
    state = ExecutionState.start({"a": 1})
    with templates.collect_misses() as misses:
        text = templates.render(
            {"x": "{{a}} {{nope}}", "y": ["{{gone.x}}", "{{nope || a}}"]}, state
        )
        bare = templates.lookup_path(state, "just text")
    assert text == {"x": "1 {{nope}}", "y": ["{{gone.x}}", 1]}
    assert templates.is_missing(bare)  # a bare path is the caller's text, not a miss
    assert misses.references == ["{{nope}}", "{{gone.x}}"]
    assert templates.render("{{nope}}", state) == "{{nope}}"  # outside a block: not recorded


def node_warnings(instance: DagsterInstance, run_id: str) -> list[dict[str, Any]]:
    found = []
    for record in instance.get_records_for_run(
        run_id, of_type=DagsterEventType.ENGINE_EVENT
    ).records:
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        metadata = event.engine_event_data.metadata
        kind = metadata.get(EVENT_KIND_METADATA)
        if kind is not None and kind.value == "node.warning":
            found.append(
                {"step": event.step_key, **metadata[EVENT_DATA_METADATA].value}  # type: ignore[dict-item]
            )
    return found


def test_an_unresolved_reference_warns_on_the_node_and_as_a_platform_event() -> None:
    compiled = build_job(nested_switch())
    with instance_for_test() as instance:
        result = execute_workflow(compiled, {"data": {"category": "A"}}, instance=instance)
        assert result.status == "succeeded"  # warn: the text stays as written, the run goes on
        assert result.nodes["switch1"].output["value"] == "{{input.category}}"
        [warning] = node_warnings(instance, result.run_id)
        logged = [
            record.event_log_entry.user_message
            for record in instance.get_records_for_run(result.run_id).records
            if record.event_log_entry.level == logging.WARNING
            and "resolves to nothing" in (record.event_log_entry.user_message or "")
        ]
    assert warning["node_id"] == "switch1" and warning["field"] == "expression"
    assert warning["reference"] == "{{input.category}}"
    assert "config.expression" in warning["message"] and warning["step"]
    assert len(logged) == 1  # the node's log line (the event is an engine event)
    assert "switch1" in logged[0] and "{{input.category}}" in logged[0]


def assert_refused(result: Any) -> None:
    assert result.status == "failed"
    failed = result.nodes["switch1"]
    assert failed.status == "failed" and failed.attempts == 1  # not retried
    assert failed.error is not None
    assert "switch1" in failed.error and "config.expression" in failed.error
    assert "{{input.category}}" in failed.error
    assert result.nodes["switch2"].status in ("skipped", "not_run")


def test_the_workflow_setting_error_fails_the_node_naming_field_and_reference() -> None:
    definition = nested_switch()
    definition["definition"]["settings"] = {"unresolvedReferences": "error"}
    assert_refused(run_workflow(definition, {"data": {}}))
    assert run_workflow(definition, {"category": "B"}).status == "succeeded"


def test_the_platform_default_error_applies_unless_the_workflow_says_warn() -> None:
    strict = Settings(unresolved_references="error")
    assert_refused(run_workflow(nested_switch(), {}, settings=strict))
    lenient = nested_switch()
    lenient["definition"]["settings"] = {"unresolvedReferences": "warn"}
    assert run_workflow(lenient, {}, settings=strict).status == "succeeded"


def test_an_invalid_setting_is_a_validation_error() -> None:
    definition = nested_switch()
    definition["definition"]["settings"] = {"unresolvedReferences": "ignore"}
    assert "invalid_settings" in {p.code for p in validate(definition) if p.severity == "error"}


def test_template_output_variables_are_not_warned_about() -> None:
    strict = Settings(unresolved_references="error")
    definition = chain(
        node("in", "input", inputName="who"),
        node("doc", "templateOutput", template="Hi {{name}} from {{who}}",
             variables={"name": "{{who}}"}, outputVariable="doc"),
    )  # fmt: skip
    result = run_workflow(definition, {"who": "Ada"}, settings=strict)
    assert result.status == "succeeded"
    assert result.output("doc") == {"doc": "Hi Ada from Ada"}


def test_a_loop_body_run_inline_reports_its_own_nodes_warnings() -> None:
    definition = flow(
        [
            node("in", "input", inputName="limit", inputType="number"),
            node("loop", "loop", loopType="while", condition="(step.n || 0) < limit", maxIterations=10),
            node("step", "transform", operation="custom", inputData="{{index}}", expression="{ 'n': $ + 1 }"),
            node("note", "transform", transformType="template", template="{{index}}: {{ghost}}"),
        ],
        [("in", "loop"), ("loop", "step", "body"), ("step", "note")],
    )  # fmt: skip
    compiled = build_job(definition)
    with instance_for_test() as instance:
        result = execute_workflow(compiled, {"limit": 2}, instance=instance)
        warnings = node_warnings(instance, result.run_id)
    assert result.status == "succeeded"
    # once per iteration, each reported by the loop's op (the body runs inside it)
    assert [(w["node_id"], w["field"], w["reference"]) for w in warnings] == [
        ("note", "template", "{{ghost}}")
    ] * 2
