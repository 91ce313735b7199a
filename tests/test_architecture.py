"""Import rules checked from the source with `ast` (beside import-linter, with file:line messages).

* Dagster's private modules (`dagster._…`, `dagster_shared`, any `_` part of a Dagster package)
  are imported only by `flowmaestro_dagster/dagster_internals.py`, so an upgrade is reviewed in
  one file; that module re-exports only names Dagster does not export publicly, and only names
  some module uses.
* Nothing under `flowmaestro_dagster` imports `flowmaestro_api` (the API depends on the platform,
  never the reverse).
"""

import ast
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flowmaestro_dagster", "flowmaestro_api")
INTERNALS = "flowmaestro_dagster.dagster_internals"
DAGSTER_PACKAGES = (
    "dagster",
    "dagster_graphql",
    "dagster_celery",
    "dagster_postgres",
    "dagster_webserver",
)


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    path: Path
    line: int
    target: str  # absolute dotted name imported (a module, or module.name for `from` imports)

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_in(source: str, module: str, path: Path) -> Iterator[Import]:
    """Every import of a module's source, relative ones resolved, `from m import n` as `m.n`."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, path, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")
                package = package if is_package else package[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                yield Import(module, path, node.lineno, f"{base}.{alias.name}")


def all_imports() -> list[Import]:
    found: list[Import] = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found.extend(imports_in(path.read_text(), module_name(path), path))
    return found


def is_private_dagster(target: str) -> bool:
    top, *rest = target.split(".")
    if top == "dagster_shared":  # Dagster's internal support package: no public API
        return True
    return top in DAGSTER_PACKAGES and any(part.startswith("_") for part in rest)


def imports_of(target_prefix: str, imports: list[Import]) -> list[Import]:
    return [
        i for i in imports if i.target == target_prefix or i.target.startswith(target_prefix + ".")
    ]


IMPORTS = all_imports()


# -- the checks themselves see what they must (else the rules below would pass vacuously) -------


@pytest.mark.parametrize(
    ("source", "private"),
    [
        ("from dagster._core.events import EngineEventData", True),
        ("import dagster._check as check", True),
        ("from dagster import _check", True),
        ("from dagster_shared.serdes import deserialize_value", True),
        ("from dagster_celery._private import x", True),
        ("from dagster import DagsterInstance", False),
        ("from dagster_celery.tasks import create_task", False),
        ("from dagster_graphql import DagsterGraphQLClient", False),
        ("import dagster_postgres", False),
        ("from mypkg._dagster import x", False),
    ],
)
def test_private_imports_are_recognised(source: str, private: bool) -> None:
    found = list(imports_in(source, "flowmaestro_dagster.x", ROOT / "flowmaestro_dagster/x.py"))
    assert any(is_private_dagster(i.target) for i in found) is private


def test_relative_imports_are_resolved() -> None:
    path = ROOT / "flowmaestro_dagster/engines/x.py"
    source = "from ..control import client\nfrom . import local\nfrom .celery import CeleryDispatch"
    targets = [i.target for i in imports_in(source, "flowmaestro_dagster.engines.x", path)]
    assert targets == [
        "flowmaestro_dagster.control.client",
        "flowmaestro_dagster.engines.local",
        "flowmaestro_dagster.engines.celery.CeleryDispatch",
    ]
    init = ROOT / "flowmaestro_dagster/engines/__init__.py"
    source = "from .threaded import threaded_executor"
    (found,) = imports_in(source, "flowmaestro_dagster.engines", init)
    assert found.target == "flowmaestro_dagster.engines.threaded.threaded_executor"


def test_the_scan_covers_both_packages_and_sees_the_internals() -> None:
    scanned = {i.module.split(".")[0] for i in IMPORTS}
    assert scanned == set(PACKAGES)
    assert any(is_private_dagster(i.target) for i in IMPORTS if i.module == INTERNALS)


# -- the rules --------------------------------------------------------------------------------


def test_only_dagster_internals_imports_private_dagster_modules() -> None:
    offenders = [
        f"{i.where()}: imports {i.target} (import it from {INTERNALS}, with why)"
        for i in IMPORTS
        if i.module != INTERNALS and is_private_dagster(i.target)
    ]
    assert not offenders, "\n".join(offenders)


def test_the_platform_never_imports_the_api() -> None:
    offenders = [
        f"{i.where()}: imports {i.target}"
        for i in imports_of("flowmaestro_api", IMPORTS)
        if i.module.startswith("flowmaestro_dagster")
    ]
    assert not offenders, "\n".join(offenders)


def test_dagster_internals_is_standalone() -> None:
    """Like errors.py, it sits outside the layers: it imports Dagster only."""
    own = [i for i in IMPORTS if i.module == INTERNALS]
    assert own
    others = [f"{i.where()}: imports {i.target}" for i in own if not is_private_dagster(i.target)]
    assert not others, "\n".join(others)


def test_every_internal_name_has_a_reason_and_no_public_equivalent() -> None:
    internals = importlib.import_module(INTERNALS)
    path = ROOT / "flowmaestro_dagster/dagster_internals.py"
    lines = path.read_text().splitlines()
    tree = ast.parse("\n".join(lines))
    imported: set[str] = set()
    problems: list[str] = []
    for node in tree.body:
        if not isinstance(node, ast.ImportFrom):
            continue
        imported.update(alias.asname or alias.name for alias in node.names)
        above = node.lineno - 2  # the line before the statement (0-based)
        while above >= 0 and lines[above].startswith("from dagster"):
            above -= 1  # consecutive imports share the comment above the first
        if above < 0 or not lines[above].startswith("#"):
            problems.append(f"dagster_internals.py:{node.lineno}: no comment says why")
    assert set(internals.__all__) == imported
    for name in internals.__all__:
        if getattr(dagster, name, None) is getattr(internals, name):
            problems.append(f"dagster.{name} is public: import it from dagster instead")
    assert not problems, "\n".join(problems)


def test_every_internal_name_is_used() -> None:
    internals = importlib.import_module(INTERNALS)
    used = {
        i.target.rsplit(".", 1)[1] for i in imports_of(INTERNALS, IMPORTS) if i.module != INTERNALS
    }
    unused = sorted(set(internals.__all__) - used)
    assert not unused, f"{INTERNALS} re-exports names nothing imports: {unused}"
