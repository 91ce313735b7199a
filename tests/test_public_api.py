"""`import flowmaestro_dagster`: a small, sorted `__all__` that resolves lazily, covers the
names the README documents, and does not import Dagster until a name is used."""

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import flowmaestro_dagster

ROOT = Path(__file__).resolve().parents[1]


def _isort_key(name: str) -> tuple[int, str]:
    """Ruff's RUF022 order: CONSTANTS, then Classes, then functions, each alphabetical."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def test_all_is_sorted_unique_and_matches_the_lazy_table() -> None:
    names = flowmaestro_dagster.__all__
    assert names == sorted(names, key=_isort_key)
    assert len(set(names)) == len(names)
    assert set(names) == set(flowmaestro_dagster._EXPORTS)


@pytest.mark.parametrize("name", flowmaestro_dagster.__all__)
def test_every_name_resolves_to_its_defining_module(name: str) -> None:
    value = getattr(flowmaestro_dagster, name)
    home = importlib.import_module(flowmaestro_dagster._EXPORTS[name])
    assert value is getattr(home, name)
    assert value.__module__ == home.__name__  # defined there, not re-exported from elsewhere
    assert name in dir(flowmaestro_dagster)


def test_star_import_and_unknown_names() -> None:
    namespace: dict[str, object] = {}
    exec("from flowmaestro_dagster import *", namespace)
    assert set(flowmaestro_dagster.__all__) <= set(namespace)
    with pytest.raises(AttributeError, match="no attribute 'compile_workflows'"):
        _ = flowmaestro_dagster.compile_workflows


def test_all_covers_what_the_readme_documents() -> None:
    """A public name of an exported name's module that README mentions (`name`) is exported."""
    homes = [importlib.import_module(m) for m in set(flowmaestro_dagster._EXPORTS.values())]
    public = {
        name
        for home in homes
        for name, value in vars(home).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == home.__name__
    }
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"`([A-Za-z_]\w*)`", readme)) & public
    assert documented  # the README names some (compile_workflow, build_job ...)
    assert documented - set(flowmaestro_dagster.__all__) == set()
    # and every `from flowmaestro_dagster import ...` in the docs imports exported names
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for imported in re.findall(
            r"^from flowmaestro_dagster import (.+)$", doc.read_text(), re.M
        ):
            names = {n.strip(" ()") for n in imported.split(",")} - {""}
            assert names <= set(flowmaestro_dagster.__all__), doc.name


def test_importing_the_package_imports_neither_dagster_nor_its_parts() -> None:
    """A fresh interpreter: the package and the pure spec load without Dagster; the first
    use of a name loads its module (and Dagster) then."""
    script = (
        "import json, sys\n"
        "def loaded():\n"
        "    return sorted(m for m in sys.modules if m.split('.')[0] in {'dagster', 'flowmaestro_dagster'})\n"
        "import flowmaestro_dagster\n"
        "after_package = loaded()\n"
        "import flowmaestro_dagster.spec.models\n"
        "after_spec = loaded()\n"
        "flowmaestro_dagster.build_job\n"
        "print(json.dumps([after_package, after_spec, loaded()]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    after_package, after_spec, after_use = json.loads(out)
    assert after_package == ["flowmaestro_dagster"]
    assert not any(m.split(".")[0] == "dagster" for m in after_spec)
    assert "flowmaestro_dagster.spec.models" in after_spec
    assert "dagster" in after_use and "flowmaestro_dagster.engines.jobs" in after_use
