"""The requests `DagsterClient` writes by hand, checked against the installed Dagster's GraphQL
schema without a webserver: a renamed type or field fails here, not in an end-to-end run."""

from collections.abc import Callable
from typing import Any

import pytest
from dagster_graphql.schema import create_schema
from graphql import GraphQLSchema, OperationDefinitionNode, parse, validate
from graphql.execution.values import get_variable_values

from flowmaestro_dagster.control.client import DagsterClient


class CapturingClient(DagsterClient):
    """Sends nothing: keeps each GraphQL request and answers a successful launch."""

    def __init__(self) -> None:
        super().__init__("http://no-webserver.invalid/graphql")
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def _graphql(
        self, query: str, variables: dict[str, Any], *, timeout: float | None = None
    ) -> Any:
        self.requests.append((query, variables))
        return {"launchRunReexecution": {"__typename": "LaunchRunSuccess", "run": {"runId": "r2"}}}


@pytest.fixture(scope="module")
def schema() -> GraphQLSchema:
    return create_schema().graphql_schema


def assert_valid(schema: GraphQLSchema, query: str, variables: dict[str, Any]) -> None:
    document = parse(query)
    assert validate(schema, document) == []
    [operation] = document.definitions
    assert isinstance(operation, OperationDefinitionNode)
    coerced = get_variable_values(schema, operation.variable_definitions or [], variables)
    assert isinstance(coerced, dict), coerced  # a list of errors when a value does not fit


@pytest.mark.parametrize(
    ("reexecute", "variable"),
    [
        (lambda c: c.reexecute_from_failure("r1", {"flowmaestro/retry": "r1"}), "reexecution"),
        (
            lambda c: c.reexecute_steps(
                location="loc",
                job="job",
                parent_run_id="r1",
                root_run_id="r0",
                step_keys=["a", "b"],
                run_config={"ops": {}},
                tags={"flowmaestro/execution": "e1"},
            ),
            "execution",
        ),
    ],
    ids=["from-failure", "chosen-steps"],
)
def test_a_reexecution_sends_a_request_the_schema_accepts(
    schema: GraphQLSchema, reexecute: Callable[[DagsterClient], str], variable: str
) -> None:
    client = CapturingClient()
    assert reexecute(client) == "r2"
    [(query, variables)] = client.requests
    assert list(variables) == [variable]  # Dagster takes exactly one kind of params
    assert_valid(schema, query, variables)
