"""docs/connectors.md lists exactly what the catalogue serves."""

from pathlib import Path

from flowmaestro_dagster.nodes.connectors.catalogue_doc import render
from flowmaestro_dagster.nodes.connectors.declarative import catalogue

PAGE = Path(__file__).resolve().parents[1] / "docs" / "connectors.md"


def test_the_page_is_the_catalogue() -> None:
    assert PAGE.read_text() == render(), (
        "docs/connectors.md is stale: python -m flowmaestro_dagster.nodes.connectors.catalogue_doc"
        " > docs/connectors.md"
    )


def test_every_operation_is_listed_with_its_documentation_page() -> None:
    text = render()
    for provider in catalogue().values():
        assert f"## {provider.name} (`{provider.id}`)" in text
        for op in provider.operations:
            assert f"- `{op.id}`" in text and op.docs in text
