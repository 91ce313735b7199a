"""`flowmaestro` command line: validate, run, dev."""

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowmaestro_dagster.catalog import workflow_files
from flowmaestro_dagster.compiler import compile_workflow
from flowmaestro_dagster.errors import InvalidWorkflowError
from flowmaestro_dagster.settings import PROJECT_ROOT, get_settings
from flowmaestro_dagster.spec.problems import Problem

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _problem_dict(problem: Problem) -> dict[str, Any]:
    return problem.model_dump(exclude_none=True)


def validate_file(path: Path) -> dict[str, Any]:
    """One validation record: file, ok, job, ops, errors[], warnings[]."""
    record: dict[str, Any] = {"file": str(path), "ok": False, "job": None, "ops": 0}
    try:
        text = path.read_bytes()
    except OSError as exc:
        record.update(errors=[{"code": "unreadable", "message": str(exc)}], warnings=[])
        return record
    try:
        compiled = compile_workflow(text)
    except InvalidWorkflowError as exc:
        record["errors"] = [_problem_dict(p) for p in exc.problems if p.severity == "error"]
        record["warnings"] = [_problem_dict(p) for p in exc.problems if p.severity == "warning"]
        return record
    record.update(
        ok=True,
        job=compiled.job_name,
        ops=len(compiled.aliases),
        errors=[],
        warnings=[_problem_dict(p) for p in compiled.warnings],
    )
    return record


def cmd_validate(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.paths]
    missing = [p for p in paths if not p.exists()]
    if missing:
        print(f"flowmaestro validate: no such file or folder: {missing[0]}", file=sys.stderr)
        return EXIT_USAGE
    files = workflow_files(paths)
    if not files:
        print("flowmaestro validate: no .json files found", file=sys.stderr)
        return EXIT_USAGE
    failed = 0
    for path in files:
        record = validate_file(path)
        failed += not record["ok"]
        if args.json:
            print(json.dumps(record, ensure_ascii=False), flush=True)
            continue
        if record["ok"]:
            extra = f", {len(record['warnings'])} warning(s)" if record["warnings"] else ""
            print(f"ok    {path}  job={record['job']} ops={record['ops']}{extra}")
        else:
            print(f"error {path}")
            for problem in record["errors"]:
                print(f"        {_describe(problem)}")
        if args.verbose:
            for problem in record["warnings"]:
                print(f"        warning: {_describe(problem)}")
    if not args.json:
        print(f"{len(files) - failed} of {len(files)} workflow(s) compile")
    return EXIT_FAILED if failed else EXIT_OK


def _describe(problem: dict[str, Any]) -> str:
    return Problem.model_validate({"severity": "error", **problem}).describe()


def _read_inputs(raw: str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    text = Path(raw[1:]).read_text() if raw.startswith("@") else raw
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("--inputs must be a JSON object")
    return value


def cmd_run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        inputs = _read_inputs(args.inputs)
    except (OSError, ValueError) as exc:
        print(f"flowmaestro run: bad --inputs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        compiled = compile_workflow(path.read_bytes())
    except OSError as exc:
        print(f"flowmaestro run: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    except InvalidWorkflowError as exc:
        print(f"flowmaestro run: {path} is not a valid workflow:", file=sys.stderr)
        for problem in exc.problems:
            if problem.severity == "error":
                print(f"  {problem.describe()}", file=sys.stderr)
        return EXIT_USAGE

    from dagster import DagsterInstance

    from flowmaestro_dagster.running import execute_locally

    _ensure_dagster_home()
    with DagsterInstance.get() as instance:
        result = execute_locally(compiled, inputs, instance=instance, log_level="ERROR")
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, default=str))
    else:
        print(f"run {result.run_id}: {result.status}")
        for node_id, node in result.nodes.items():
            detail = f" ({node.iterations} items)" if node.iterations is not None else ""
            error = f": {node.error}" if node.error else ""
            print(f"  {node.status:<9} {node_id} [{node.type}] {node.label}{detail}{error}")
        print("outputs:")
        print(json.dumps(result.outputs, indent=2, ensure_ascii=False, default=str))
    return EXIT_OK if result.status == "succeeded" else EXIT_FAILED


def _ensure_dagster_home() -> Path:
    home = Path(os.environ.get("DAGSTER_HOME") or get_settings().dagster_home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def cmd_dev(args: argparse.Namespace) -> int:
    """Dagster webserver + daemon on the embedded instance, with the example workflows."""
    settings = get_settings()
    home = _ensure_dagster_home()
    command = [
        str(Path(sys.executable).with_name("dagster")),
        "dev",
        "-w",
        str(PROJECT_ROOT / "workspace.yaml"),
        "-h",
        args.host or settings.webserver_host,
        "-p",
        str(args.port or settings.webserver_port),
    ]
    print(f"DAGSTER_HOME={home}")
    host, port = args.host or settings.webserver_host, args.port or settings.webserver_port
    print(f"Dagster UI: http://{host}:{port}")
    process = subprocess.Popen(command, cwd=PROJECT_ROOT)

    def stop(signum: int, _frame: object) -> None:
        # `dagster dev` shuts its webserver, daemon and code servers down on SIGINT.
        process.send_signal(signal.SIGINT)

    signal.signal(signal.SIGTERM, stop)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        return process.wait()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowmaestro", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    validate = commands.add_parser("validate", help="check workflow files and compile them")
    validate.add_argument("paths", nargs="+", help="workflow JSON files or folders")
    validate.add_argument("--json", action="store_true", help="one JSON object per file")
    validate.add_argument("-v", "--verbose", action="store_true", help="also list warnings")
    validate.set_defaults(handler=cmd_validate)

    run = commands.add_parser("run", help="run a workflow on the local Dagster instance")
    run.add_argument("file", help="workflow JSON file")
    run.add_argument("--inputs", help="inputs as a JSON object, or @file.json")
    run.add_argument("--json", action="store_true", help="print the result as JSON")
    run.set_defaults(handler=cmd_run)

    dev = commands.add_parser("dev", help="start the Dagster UI and daemon with the examples")
    dev.add_argument("--host", default=None)
    dev.add_argument("--port", type=int, default=None)
    dev.set_defaults(handler=cmd_dev)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    warnings.filterwarnings("ignore", module="dagster")
    args = build_parser().parse_args(argv)
    handler = args.handler
    try:
        code: int = handler(args)
    except BrokenPipeError:  # output piped into `head`
        return EXIT_OK
    return code


if __name__ == "__main__":
    sys.exit(main())
