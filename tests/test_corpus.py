"""Every real definition compiles (but the four with cycles); the code location loads."""

from pathlib import Path

import pytest

from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.errors import InvalidWorkflowError
from tests.builders import flow, node
from tests.conftest import CYCLIC, corpus_files, corpus_id

FILES = corpus_files()


def test_the_corpus_is_there() -> None:
    assert len(FILES) >= 224


@pytest.mark.parametrize("path", [f for f in FILES if corpus_id(f) not in CYCLIC], ids=corpus_id)
def test_corpus_workflow_compiles(path: Path) -> None:
    compiled = build_job(path.read_bytes())
    node_count = len(compiled.spec.nodes)
    assert len(compiled.job.nodes_in_topological_order) >= 1
    assert len(compiled.aliases) <= node_count
    # every node id is visible on its op
    for node_id, alias in compiled.aliases.items():
        assert compiled.job.graph.node_named(alias).tags["flowmaestro/node_id"] == node_id


@pytest.mark.parametrize("relative", sorted(CYCLIC))
def test_cyclic_corpus_workflow_is_rejected_naming_the_cycle(relative: str) -> None:
    path = next(f for f in FILES if corpus_id(f) == relative)
    with pytest.raises(InvalidWorkflowError) as info:
        build_job(path.read_bytes())
    cycles = [p for p in info.value.problems if p.code == "cycle"]
    assert len(cycles) == 1
    path_nodes = cycles[0].message.split(": ", 1)[1].split(";")[0].split(" → ")
    assert path_nodes[0] == path_nodes[-1] and len(path_nodes) >= 3


def test_router_edge_with_a_handle_matching_no_route_is_a_warning_not_a_crash() -> None:
    definition = flow(
        [
            node("in", "input", inputName="q"),
            node("r", "router", prompt="{{q}}", routes=["hot", {"value": "cold"}]),
            node("a", "transform", operation="passthrough"),
            node("b", "transform", operation="passthrough"),
        ],
        [("in", "r"), ("r", "a", "hot"), ("r", "b", "lukewarm")],
    )
    compiled = build_job(definition)
    assert [p.code for p in compiled.warnings] == ["unknown_branch_handle"]
    assert "lukewarm" in compiled.warnings[0].message


def test_definitions_with_the_example_workflows_load() -> None:
    import dagster as dg

    from flowmaestro_dagster.definitions import build_definitions

    defs = build_definitions()
    names = {job.name for job in defs.resolve_all_job_defs()}
    assert {"lead_qualification", "order_review", "parallel_enrichment"} <= names
    repository = defs.get_repository_def()
    assert isinstance(repository, dg.RepositoryDefinition)
