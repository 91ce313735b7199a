"""Media nodes (issue 18): time and peak memory per node type on a typical input.

Each module measures its cases in spawned children (bench/media_*.py); this section gathers
their rows and the knowledge-base query figures (bench/knowledge.py) into one result.
"""

from typing import Any

from bench import knowledge, media_ai, media_documents, media_files, media_sheets, media_web

MODULES = {
    "files": media_files,
    "web": media_web,
    "documents": media_documents,
    "sheets and charts": media_sheets,
    "generative (fake OpenAI-compatible server)": media_ai,
}


def run(quick: bool = False) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    for family, module in MODULES.items():
        try:
            found = module.run()
        except Exception as exc:  # noqa: BLE001 - one family failing must not hide the others
            errors[family] = f"{type(exc).__name__}: {exc}"
            continue
        rows += [{"family": family, **row} for row in found]
    return {"rows": rows, "errors": errors, "knowledge": knowledge.run(quick)}


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2, default=str))
