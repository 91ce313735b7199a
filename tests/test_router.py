"""The router node: the model picks a route, untaken branches are pruned, defaults apply."""

from typing import Any

import pytest

from flowmaestro_dagster.errors import (
    NodeConfigurationError,
    NodeExecutionError,
    TransientNodeError,
)
from flowmaestro_dagster.nodes.llm import parse_route_answer
from flowmaestro_dagster.spec.configs import Route
from flowmaestro_dagster.testing import FakeLLMServer, FakeReply, run_workflow
from tests.conftest import flow
from tests.test_llm import run_node

ROUTES = [
    {"value": "billing", "label": "Billing", "description": "Invoices, refunds, payments"},
    {"value": "tech", "label": "Technical support", "description": "Bugs and outages"},
    {"value": "sales", "label": "Sales", "description": "Buying more seats"},
]
ROUTER = {
    "provider": "openai",
    "model": "gpt-4o-mini",
    "prompt": "Ticket: {{ticket}}",
    "routes": ROUTES,
    "defaultRoute": "sales",
    "outputVariable": "department",
}
TICKET = {"ticket": "The app crashes when I upload a file"}


R = [Route(value="billing", label="Billing"), Route(value="tech", label="Tech support")]
R2 = [*R, Route(value="mid-market"), Route(value="market")]


@pytest.mark.parametrize(
    ("answer", "routes", "index", "reason"),
    [
        ('{"route": "tech", "reason": "a crash"}', R, 1, "a crash"),
        ('```json\n{"route": "billing", "reason": "refund"}\n```', R, 0, "refund"),
        ('Sure! {"route": "tech"} is my answer', R, 1, None),
        ("tech", R, 1, None),
        ("  TECH.  ", R, 1, None),
        ('"billing"', R, 0, None),
        ("Route: billing", R, 0, None),
        ("Tech support", R, 1, None),  # a label
        ("This is clearly a billing question.", R, 0, None),
        ("billing or tech, hard to say", R, None, None),  # names two routes
        ("weather", R, None, None),
        ("", R, None, None),
        ('{"route": "weather", "reason": "none fits"}', R, None, "none fits"),
        ('{"something": "else"}', R, None, None),
        ("mid-market", R2, 2, None),
        ("market", R2, 3, None),
        ("the mid-market segment", R2, 2, None),  # `market` inside `mid-market` is no match
    ],
)
def test_parse_route_answer(
    answer: str, routes: list[Route], index: int | None, reason: str | None
) -> None:
    assert parse_route_answer(answer, routes) == (index, reason)


# -- as a plain function ---------------------------------------------------------------------------


def test_router_chooses_a_route_and_records_the_answer(llm: FakeLLMServer) -> None:
    llm.enqueue('{"route": "tech", "reason": "The app crashes"}')
    result = run_node("router", ROUTER, llm.settings(), TICKET)
    assert result.branches == frozenset({"route-1"})
    assert result.output == {
        "route": "tech",
        "label": "Technical support",
        "reason": "The app crashes",
        "text": '{"route": "tech", "reason": "The app crashes"}',
        "usedDefault": False,
        "usage": result.output["usage"],
        "model": "gpt-4o-mini",
        "provider": "openai",
        "department": "tech",
    }
    assert result.output["usage"]["totalTokens"] > 0


def test_router_request_lists_the_routes_and_is_deterministic(llm: FakeLLMServer) -> None:
    llm.enqueue("tech")
    raw = {**ROUTER, "systemPrompt": "You triage tickets for {{company}}."}
    run_node("router", raw, llm.settings(), {**TICKET, "company": "Acme"})
    [request] = llm.chat_requests
    assert request.model == "gpt-4o-mini"
    assert request.prompt == "Ticket: The app crashes when I upload a file"
    system = request.system or ""
    assert system.startswith("You triage tickets for Acme.")
    assert "- billing: Billing - Invoices, refunds, payments" in system
    assert "- tech: Technical support - Bugs and outages" in system
    assert '"route": "<one of: billing, tech, sales>"' in system
    assert request.temperature == 0.0  # routing defaults to temperature 0


def test_router_temperature_from_the_node_wins(llm: FakeLLMServer) -> None:
    llm.enqueue("tech")
    run_node("router", {**ROUTER, "temperature": 0.7}, llm.settings(), TICKET)
    assert llm.chat_requests[0].temperature == 0.7


def test_unknown_answer_takes_the_default_route(llm: FakeLLMServer) -> None:
    llm.enqueue("I would say: weather")
    result = run_node("router", ROUTER, llm.settings(), TICKET)
    assert result.branches == frozenset({"route-2", "default"})
    output = result.output
    assert output["route"] == "sales"
    assert output["label"] == "Sales"
    assert output["usedDefault"] is True
    assert output["text"] == "I would say: weather"
    assert output["department"] == "sales"


def test_default_route_that_names_no_route_takes_only_the_default_handle(
    llm: FakeLLMServer,
) -> None:
    llm.enqueue("weather")
    result = run_node("router", {**ROUTER, "defaultRoute": "other"}, llm.settings(), TICKET)
    assert result.branches == frozenset({"default"})
    assert result.output["route"] == "other"
    assert result.output["usedDefault"] is True


def test_unknown_answer_without_default_fails_the_node(llm: FakeLLMServer) -> None:
    llm.enqueue("weather")
    raw = {k: v for k, v in ROUTER.items() if k != "defaultRoute"}
    with pytest.raises(NodeExecutionError, match="names none of the routes") as info:
        run_node("router", raw, llm.settings(), TICKET)
    assert not info.value.retryable
    assert info.value.details["answer"] == "weather"


def test_plain_string_routes_and_the_providers_default_model(llm: FakeLLMServer) -> None:
    # The templates' dialect: routes as strings, routerType llm, no provider and no model.
    llm.enqueue("urgent")
    raw = {"routerType": "llm", "prompt": "{{ticket}}", "routes": ["urgent", "normal"]}
    settings = llm.settings(default_model="small-router")
    result = run_node("router", raw, settings, TICKET)
    assert result.branches == frozenset({"route-0"})
    assert result.output["route"] == "urgent"
    assert result.output["label"] == "urgent"
    assert llm.chat_requests[0].model == "small-router"


def test_router_without_routes_or_model_is_a_configuration_error(llm: FakeLLMServer) -> None:
    with pytest.raises(NodeConfigurationError, match="no routes"):
        run_node("router", {**ROUTER, "routes": []}, llm.settings(), TICKET)
    with pytest.raises(NodeConfigurationError, match="no model"):
        run_node("router", {"prompt": "x", "routes": ["a"]}, llm.settings(), TICKET)
    assert llm.requests == []


def test_router_without_prompt_classifies_the_upstream_output(llm: FakeLLMServer) -> None:
    llm.enqueue("billing")
    raw = {k: v for k, v in ROUTER.items() if k != "prompt"}
    upstream = {"classify": {"summary": "refund for invoice 12"}}
    result = run_node("router", raw, llm.settings(), TICKET, upstream=upstream)
    assert result.output["route"] == "billing"
    assert llm.chat_requests[0].prompt == '{"summary": "refund for invoice 12"}'
    with pytest.raises(NodeConfigurationError, match="no prompt"):
        run_node("router", raw, llm.settings(), TICKET)


def test_router_provider_errors_are_classified_like_the_llm_node(llm: FakeLLMServer) -> None:
    llm.enqueue(FakeReply.rate_limited(retry_after=3), FakeReply.error(400))
    with pytest.raises(TransientNodeError) as info:
        run_node("router", ROUTER, llm.settings(), TICKET)
    assert info.value.retry_after_seconds == 3.0
    with pytest.raises(NodeExecutionError) as permanent:
        run_node("router", ROUTER, llm.settings(), TICKET)
    assert not permanent.value.retryable


# -- through a compiled job ------------------------------------------------------------------------


def triage_flow(router: dict[str, Any] | None = None) -> dict[str, Any]:
    """input → router → one node per route (handles are route values) and one on `default`."""
    return flow(
        [
            {"id": "ticket", "type": "input", "inputName": "ticket"},
            {"id": "triage", "type": "router", **(router or ROUTER)},
            *[
                {
                    "id": f"to-{name}",
                    "type": "transform",
                    "operation": "template",
                    "template": f"{name}: {{{{department}}}}",
                    "outputVariable": f"r_{name}",
                }
                for name in ("billing", "tech", "sales", "fallback")
            ],
        ],
        [
            ("ticket", "triage"),
            ("triage", "to-billing", "billing"),
            ("triage", "to-tech", "tech"),
            ("triage", "to-sales", "route-2"),  # the index spelling of a route handle
            ("triage", "to-fallback", "default"),
        ],
    )


BRANCHES = ("to-billing", "to-tech", "to-sales", "to-fallback")
ALL_SKIPPED = dict.fromkeys(BRANCHES, "skipped")


def statuses(result: Any) -> dict[str, str]:
    return {n: result.nodes[n].status for n in BRANCHES}


def test_router_in_a_job_runs_the_chosen_branch_and_prunes_the_others(
    llm: FakeLLMServer,
) -> None:
    llm.enqueue('{"route": "tech", "reason": "crash"}')
    result = run_workflow(triage_flow(), TICKET, settings=llm.settings())
    assert result.status == "succeeded", result.nodes
    assert statuses(result) == {**ALL_SKIPPED, "to-tech": "succeeded"}
    assert result.nodes["to-tech"].output == {"r_tech": "tech: tech"}
    assert result.nodes["triage"].output["route"] == "tech"


def test_router_in_a_job_falls_back_to_the_default_route(llm: FakeLLMServer) -> None:
    llm.enqueue("no idea, sorry")
    result = run_workflow(triage_flow(), TICKET, settings=llm.settings())
    assert result.status == "succeeded", result.nodes
    assert statuses(result) == {**ALL_SKIPPED, "to-sales": "succeeded", "to-fallback": "succeeded"}
    triage = result.nodes["triage"].output
    assert triage["usedDefault"] is True
    assert triage["text"] == "no idea, sorry"


def test_router_in_a_job_without_default_fails_and_runs_no_branch(llm: FakeLLMServer) -> None:
    llm.enqueue("no idea")
    router = {k: v for k, v in ROUTER.items() if k != "defaultRoute"}
    result = run_workflow(triage_flow(router), TICKET, settings=llm.settings())
    assert result.status == "failed"
    assert result.nodes["triage"].status == "failed"
    assert "names none of the routes" in (result.nodes["triage"].error or "")
    assert all(status != "succeeded" for status in statuses(result).values())
