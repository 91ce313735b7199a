"""`{{...}}` interpolation: nested paths, arrays, objects, expressions and filters."""

from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.lang.templates import render

STATE = (
    ExecutionState.start({"topic": "AI", "tags": ["a", "b"]})
    .with_output("llm-1", 1, {"summary": {"text": "Hello", "scores": [1, 2], "meta": {"k": "v"}}})
    .with_output("fetch", 2, {"status": 200, "data": {"items": [{"name": "x"}, {"name": "y"}]}})
)


def test_nested_paths_arrays_and_quoted_keys() -> None:
    assert render("{{summary.text}}", STATE) == "Hello"
    assert render("{{summary.scores[1]}}", STATE) == 2
    assert render("{{summary['meta']['k']}}", STATE) == "v"
    assert render("{{fetch.data.items[1].name}}", STATE) == "y"
    assert render("{{llm-1.summary.text}}", STATE) == "Hello"
    assert render("${fetch.data.items}", STATE) == [{"name": "x"}, {"name": "y"}]


def test_a_whole_reference_keeps_its_type_and_text_gets_json() -> None:
    assert render("{{tags}}", STATE) == ["a", "b"]
    assert render("tags: {{tags}}", STATE) == 'tags: ["a", "b"]'
    assert render("meta={{summary.meta}}", STATE) == 'meta={"k": "v"}'
    assert render("n={{fetch.status}} ok", STATE) == "n=200 ok"


def test_unresolved_references_stay_verbatim() -> None:
    assert render("Hi {{nobody.name}}!", STATE) == "Hi {{nobody.name}}!"
    assert render("{{summary.missing}}", STATE) == "{{summary.missing}}"
    assert render("{{ summary.text | nofilter }}", STATE) == "{{ summary.text | nofilter }}"


def test_structures_render_recursively() -> None:
    value = {"a": ["{{topic}}", {"b": "{{summary.scores}}"}], "n": 3}
    assert render(value, STATE) == {"a": ["AI", {"b": [1, 2]}], "n": 3}


def test_expressions_and_filters_inside_references() -> None:
    assert render("{{missing || topic}}", STATE) == "AI"
    assert render("{{fetch.status === 200 ? 'ok' : 'bad'}}", STATE) == "ok"
    assert render("{{summary.text | truncate: 4}}", STATE) == "H..."
    assert render("{{summary.text | upcase}}", STATE) == "HELLO"
    assert render("{{fetch.data.items.length}}", STATE) == 2
    now = render("{{$now}}", STATE)
    assert isinstance(now, str) and now.endswith("Z")


def test_fields_of_an_llm_json_answer_are_readable() -> None:
    from flowmaestro_dagster.lang.expressions import Evaluator, parse

    answer = '```json\n{"winRate": {"SMB": 0.4}, "isValid": true, "text": "inner"}\n```'
    reply = {"text": answer, "usage": {}, "model": "m", "provider": "p"}
    state = ExecutionState.start({}).with_output("llm-1", 0, {"analysis": reply})
    assert render("{{analysis.winRate}}", state) == {"SMB": 0.4}
    assert render("{{analysis.text}}", state) == answer  # the reply's own keys come first
    assert render("{{analysis.nope}}", state) == "{{analysis.nope}}"
    assert Evaluator(state).evaluate(parse("analysis.isValid == true")) is True
    prose = {"text": "no JSON here {", "model": "m"}
    plain = ExecutionState.start({}).with_output("llm-1", 0, {"analysis": prose})
    assert render("{{analysis.winRate}}", plain) == "{{analysis.winRate}}"
    not_a_reply = {"text": '{"a": 1}'}  # no `model`: not an LLM reply, no reading
    other = ExecutionState.start({}).with_output("n", 0, {"x": not_a_reply})
    assert render("{{x.a}}", other) == "{{x.a}}"
