"""docs/connectors.md, written from the catalogue itself so the list cannot drift from it.

    python -m flowmaestro_dagster.nodes.connectors.catalogue_doc > docs/connectors.md

tests/test_catalogue_doc.py fails when the committed page differs from what this writes.
"""

from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import catalogue

HEADER = """# Integration providers: the catalogue

Every provider and operation the platform's declarative connectors serve, written from
`flowmaestro_dagster/nodes/connectors/catalog/*.yaml` by
`python -m flowmaestro_dagster.nodes.connectors.catalogue_doc` (a test keeps this page equal to
the catalogue). The format, auth schemes, pagination and errors: [providers.md](providers.md).
Each operation: its id, then the other ids templates use for it (any case), the request, the
required parameters, and the provider's documentation page the operation follows.
"""


def _schemes(auth: Any) -> str:
    """`oauth2`, or `oauth2 or api_key` for a provider taking either."""
    options = auth if isinstance(auth, list | tuple) else [auth]
    return " or ".join(str(getattr(option, "scheme", option)) for option in options)


def render() -> str:
    providers = catalogue()
    operations = sum(len(p.operations) for p in providers.values())
    lines = [HEADER, f"{len(providers)} providers, {operations} operations.", ""]
    lines += [
        "| provider | auth | operations |",
        "|---|---|---|",
        *(
            f"| [{p.name}](#{p.id}) (`{p.id}`) | {_schemes(p.auth)} | {len(p.operations)} |"
            for p in sorted(providers.values(), key=lambda p: p.id)
        ),
        "",
    ]
    for provider in sorted(providers.values(), key=lambda p: p.id):
        lines += [
            f'<a id="{provider.id}"></a>',
            f"## {provider.name} (`{provider.id}`)",
            "",
            f"Auth: {_schemes(provider.auth)}; base URL `{provider.base_url}`; "
            f"API reference: {provider.docs}",
            "",
        ]
        for op in provider.operations:
            aliases = f" ← {', '.join(op.aliases)}" if op.aliases else ""
            required = [p.name for p in op.parameters if p.required]
            needs = f"; needs {', '.join(required)}" if required else ""
            lines.append(
                f"- `{op.id}`{aliases}: {op.method} `{op.path}`{needs} ([docs]({op.docs}))"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
