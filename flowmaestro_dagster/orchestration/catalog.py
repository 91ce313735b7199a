"""Workflow files on disk → compiled jobs with unique names (the only module here doing I/O)."""

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowmaestro_dagster.compile.compiler import CompiledWorkflow
from flowmaestro_dagster.compile.naming import job_name_for, sanitize
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.errors import InvalidWorkflowError
from flowmaestro_dagster.spec.parse import parse_workflow
from flowmaestro_dagster.spec.problems import Problem

log = logging.getLogger(__name__)


@dataclass
class CatalogEntry:
    path: Path
    compiled: CompiledWorkflow | None = None
    problems: list[Problem] = field(default_factory=list)


def workflow_files(paths: Iterable[Path]) -> list[Path]:
    """JSON files given directly or found (recursively) in folders, in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*.json") if p.is_file()))
        else:
            found.append(path)
    return found


def load_catalog(folder: Path, **compile_options: Any) -> list[CatalogEntry]:
    """Compile every workflow in a folder; a broken file is reported, never fatal."""
    entries: list[CatalogEntry] = []
    used: set[str] = set()
    for path in workflow_files([folder]):
        entry = CatalogEntry(path)
        entries.append(entry)
        try:
            text = path.read_bytes()
        except OSError as exc:
            log.warning("cannot read %s: %s", path, exc)
            continue
        spec, _ = parse_workflow(text)
        base = job_name_for(spec.name) if spec is not None else sanitize(path.stem)
        name = base if base not in used else f"{base}__{sanitize(path.stem.lower())}"
        try:
            entry.compiled = build_job(text, job_name=name, **compile_options)
        except InvalidWorkflowError as exc:
            entry.problems = exc.problems
            log.warning("skipping %s: %s", path, exc)
            continue
        used.add(name)
    return entries
