"""FlowMaestro on Dagster: compile a FlowMaestro workflow (JSON) into a Dagster job and run it.

    from flowmaestro_dagster import build_job, execute_workflow

    compiled = build_job(definition_json)  # raises InvalidWorkflowError listing every problem
    result = execute_workflow(compiled, {"who": "Ada"})  # a WorkflowRunResult

The names below are loaded on first use (module `__getattr__`), not here: importing this
package, or a pure part such as `flowmaestro_dagster.spec`, must not import Dagster, and
importing it has no side effects.
"""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what mypy and editors see; at run time `__getattr__` loads them
    from flowmaestro_dagster.compile.compiler import CompiledWorkflow, compile_workflow, load_spec
    from flowmaestro_dagster.engines.jobs import build_job
    from flowmaestro_dagster.engines.local import execute_workflow
    from flowmaestro_dagster.engines.results import NodeRun, WorkflowRunResult
    from flowmaestro_dagster.errors import FlowMaestroError, InvalidWorkflowError
    from flowmaestro_dagster.settings import Settings, get_settings
    from flowmaestro_dagster.spec.models import WorkflowSpec
    from flowmaestro_dagster.spec.problems import Problem

# name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "CompiledWorkflow": "flowmaestro_dagster.compile.compiler",
    "FlowMaestroError": "flowmaestro_dagster.errors",
    "InvalidWorkflowError": "flowmaestro_dagster.errors",
    "NodeRun": "flowmaestro_dagster.engines.results",
    "Problem": "flowmaestro_dagster.spec.problems",
    "Settings": "flowmaestro_dagster.settings",
    "WorkflowRunResult": "flowmaestro_dagster.engines.results",
    "WorkflowSpec": "flowmaestro_dagster.spec.models",
    "build_job": "flowmaestro_dagster.engines.jobs",
    "compile_workflow": "flowmaestro_dagster.compile.compiler",
    "execute_workflow": "flowmaestro_dagster.engines.local",
    "get_settings": "flowmaestro_dagster.settings",
    "load_spec": "flowmaestro_dagster.compile.compiler",
}

__all__ = [
    "CompiledWorkflow",
    "FlowMaestroError",
    "InvalidWorkflowError",
    "NodeRun",
    "Problem",
    "Settings",
    "WorkflowRunResult",
    "WorkflowSpec",
    "build_job",
    "compile_workflow",
    "execute_workflow",
    "get_settings",
    "load_spec",
]


def __getattr__(name: str) -> object:
    """Import a public name's module on first access and keep the name here."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
