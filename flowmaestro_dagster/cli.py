"""`flowmaestro` command line, Dagster side: validate, run, worker, migrate (the API adds
`dev`, `api` and `keys`: flowmaestro_api/cli.py)."""

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.errors import InvalidWorkflowError
from flowmaestro_dagster.orchestration.catalog import workflow_files
from flowmaestro_dagster.settings import get_settings
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
        compiled = build_job(text)
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
        compiled = build_job(path.read_bytes())
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

    from flowmaestro_dagster.engines.local import execute_workflow

    ensure_dagster_home()
    with DagsterInstance.get() as instance:
        result = execute_workflow(compiled, inputs, instance=instance, log_level="ERROR")
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


def ensure_dagster_home() -> Path:
    home = Path(os.environ.get("DAGSTER_HOME") or get_settings().dagster_home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def cmd_worker(args: argparse.Namespace) -> int:
    """A Celery worker for node steps (docs/deployment.md), in this process: SIGTERM is a warm
    shutdown (running steps finish), and the broker is always FLOWMAESTRO_CELERY_BROKER_URL,
    never Celery's AMQP default. Each pool process keeps its Dagster instance and up to
    `--job-cache` built jobs across steps (engines/celery.py)."""
    from flowmaestro_dagster.engines.celery import (
        configure_worker,
        make_celery_app,
        worker_hostname,
    )
    from flowmaestro_dagster.settings import get_settings

    api = get_settings()
    if api.celery_broker_url is None or api.celery_backend is None:
        print(
            "flowmaestro worker: set FLOWMAESTRO_CELERY_BROKER_URL (e.g. redis://host:6379/0), "
            "the same as the run workers'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.job_cache < 0:
        print("flowmaestro worker: --job-cache must be 0 or more", file=sys.stderr)
        return EXIT_USAGE
    app = make_celery_app(
        broker_url=api.celery_broker_url,
        backend_url=api.celery_backend,
        queue=api.celery_queue,
        serve_earlier_releases=True,
    )
    argv = [
        "worker",
        f"--queues={api.celery_queue}",
        f"--hostname={worker_hostname(args.name or str(os.getpid()))}",
        f"--pool={args.pool}",
        f"--loglevel={args.loglevel}",
        "--without-gossip",
        "--without-mingle",
    ]
    if args.concurrency:
        argv.append(f"--concurrency={args.concurrency}")
    configure_worker(job_cache_size=args.job_cache)
    _preload_worker()
    app.worker_main(argv)
    return EXIT_OK


def _preload_worker() -> None:
    """Import what every step needs before the pool forks, and load the connector catalogue
    once: a pool process's first step then skips seconds of imports and YAML parsing (the
    forked processes share these pages)."""
    import importlib
    import logging

    for module in _WORKER_PRELOAD:
        importlib.import_module(module)
    from flowmaestro_dagster.nodes.connectors import default_registry

    try:
        default_registry()  # what compiling a job validates connector nodes against
    except Exception as exc:  # noqa: BLE001 - a step that needs it reports the error itself
        logging.getLogger(__name__).warning("connector catalogue not preloaded: %s", exc)


# What a worker's step imports: the instance storage, Dagster's step execution, the code
# locations a job is built from (a shard's repository reads versions and schedules) and the
# node services and outputs its resources open.
_WORKER_PRELOAD = (
    "dagster_postgres",
    "flowmaestro_dagster.dagster_internals",
    "flowmaestro_dagster.definitions",
    "flowmaestro_dagster.control.workflows",
    "flowmaestro_dagster.control.schedules",
    "flowmaestro_dagster.orchestration.schedules",
    "flowmaestro_dagster.orchestration.resources",
    "flowmaestro_dagster.adapter.io_manager",
)


def cmd_code_server(args: argparse.Namespace) -> int:
    """Serve every deployed-workflow code location from this one process
    (orchestration/code_server.py)."""
    import logging

    from flowmaestro_dagster.orchestration.code_server import serve_forever
    from flowmaestro_dagster.orchestration.workspace import CodeServerAddress
    from flowmaestro_dagster.settings import get_settings

    logging.basicConfig(level=args.log_level.upper())
    ensure_dagster_home()  # each location's servicer opens the instance (runs, schedules)
    shards = args.shards if args.shards is not None else get_settings().code_location_shards
    if shards < 1:
        print("flowmaestro code-server: --shards must be 1 or more", file=sys.stderr)
        return EXIT_USAGE
    address = CodeServerAddress(
        socket_dir=Path(args.socket_dir) if args.socket_dir else None,
        host=args.host,
        port=args.port,
    )
    ready = Path(args.ready_file) if args.ready_file else None
    return serve_forever(address, shards, ready_file=ready)


def cmd_migrate(args: argparse.Namespace) -> int:
    """Create or upgrade every table: the API's, then the Dagster instance's (its schema too)."""
    from dagster import DagsterInstance

    from flowmaestro_dagster.orchestration.instance_config import (
        prepare_storage,
        write_instance_yaml,
    )
    from flowmaestro_dagster.settings import get_settings
    from flowmaestro_dagster.store.db import migrate

    api = get_settings()
    migrate(api.database_url)
    prepare_storage(api)
    home = ensure_dagster_home()
    write_instance_yaml(home, api)
    with DagsterInstance.from_config(str(home)) as instance:
        instance.upgrade()
    print(f"migrated {_redacted_url(api.database_url)}; Dagster instance at {home}")
    return EXIT_OK


def cmd_runnable(args: argparse.Namespace) -> int:
    """Per workflow: the nodes this deployment cannot run, and what it lacks for the rest."""
    from flowmaestro_dagster.control.runnable import check_definition

    paths = [Path(p) for p in args.paths]
    missing = [p for p in paths if not p.exists()]
    if missing:
        print(f"flowmaestro runnable: no such file or folder: {missing[0]}", file=sys.stderr)
        return EXIT_USAGE
    files = workflow_files(paths)
    if not files:
        print("flowmaestro runnable: no .json files found", file=sys.stderr)
        return EXIT_USAGE
    settings = get_settings()
    runnable = 0
    for path in files:
        report = check_definition(str(path), path.read_bytes(), settings)
        runnable += report.runnable
        if args.json:
            print(json.dumps(report.to_dict(), ensure_ascii=False), flush=True)
            continue
        print(f"{'ok' if report.runnable else 'no':<5} {path}")
        for error in report.errors:
            print(f"        invalid: {error}")
        for blocker in report.blockers:
            where = f"node '{blocker.node_id}' ({blocker.node_type})"
            print(f"        cannot run: {where}: {blocker.reason}")
        for need in report.needs:
            print(f"        needs {need.kind} {need.name!r} (node '{need.node_id}'): {need.how}")
    if not args.json:
        print(f"{runnable} of {len(files)} workflow(s) can run on this deployment")
    return EXIT_OK if runnable == len(files) else EXIT_FAILED


def cmd_connections_rotate_keys(args: argparse.Namespace) -> int:
    """Re-encrypt every stored connection with the first of FLOWMAESTRO_CONNECTIONS_KEYS
    (docs/security.md#connections: the key rotation procedure)."""
    from flowmaestro_dagster.store.connections import ConnectionCipher, rotate_keys

    settings = get_settings()
    counts = rotate_keys(settings.database_url, ConnectionCipher.from_settings(settings))
    print(
        f"re-encrypted {counts['rotated']} connection(s) with the first key; "
        f"{counts['current']} already were; {counts['unreadable']} unreadable"
    )
    if counts["unreadable"]:
        print(
            "unreadable connections were encrypted with a key no longer in "
            "FLOWMAESTRO_CONNECTIONS_KEYS: put it back (after the first) and run this again",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def _redacted_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def build_parser(
    more: Callable[[Any], None] | None = None, description: str | None = None
) -> argparse.ArgumentParser:
    """The Dagster-side commands; `more(commands)` adds others (the API's `dev`, `api`, `keys`)."""
    parser = argparse.ArgumentParser(prog="flowmaestro", description=description or __doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    validate = commands.add_parser("validate", help="check workflow files and compile them")
    validate.add_argument("paths", nargs="+", help="workflow JSON files or folders")
    validate.add_argument("--json", action="store_true", help="one JSON object per file")
    validate.add_argument("-v", "--verbose", action="store_true", help="also list warnings")
    validate.set_defaults(handler=cmd_validate)

    runnable = commands.add_parser(
        "runnable", help="report the nodes this deployment cannot run, and what it lacks"
    )
    runnable.add_argument("paths", nargs="+", help="workflow JSON files or folders")
    runnable.add_argument("--json", action="store_true", help="one JSON object per file")
    runnable.set_defaults(handler=cmd_runnable)

    run = commands.add_parser("run", help="run a workflow on the local Dagster instance")
    run.add_argument("file", help="workflow JSON file")
    run.add_argument("--inputs", help="inputs as a JSON object, or @file.json")
    run.add_argument("--json", action="store_true", help="print the result as JSON")
    run.set_defaults(handler=cmd_run)

    worker = commands.add_parser("worker", help="start a Celery worker for node steps")
    worker.add_argument("--name", default=None, help="unique on its host (default: the process id)")
    worker.add_argument(
        "--concurrency", type=int, default=None, help="steps at once (default: CPU count)"
    )
    worker.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"])
    worker.add_argument("--loglevel", default="INFO")
    worker.add_argument(
        "--job-cache",
        type=int,
        default=64,
        help="built jobs each pool process keeps, by job and definition hash (default: 64)",
    )
    worker.set_defaults(handler=cmd_worker)

    code_server = commands.add_parser(
        "code-server", help="serve every deployed-workflow code location from one process"
    )
    code_server.add_argument(
        "--shards", type=int, default=None, help="default: FLOWMAESTRO_CODE_LOCATION_SHARDS"
    )
    code_server.add_argument("--socket-dir", default=None, help="one unix socket per location")
    code_server.add_argument("--host", default="127.0.0.1", help="without --socket-dir")
    code_server.add_argument(
        "--port", type=int, default=4100, help="location i on port + i (without --socket-dir)"
    )
    code_server.add_argument("--ready-file", default=None, help="written once all locations load")
    code_server.add_argument("--log-level", default="warning")
    code_server.set_defaults(handler=cmd_code_server)

    migrate = commands.add_parser(
        "migrate", help="create/upgrade the API and Dagster tables, write dagster.yaml"
    )
    migrate.set_defaults(handler=cmd_migrate)

    connections = commands.add_parser("connections", help="manage stored provider connections")
    connection_commands = connections.add_subparsers(dest="connections_command", required=True)
    rotate_keys = connection_commands.add_parser(
        "rotate-keys", help="re-encrypt every connection with the first connections key"
    )
    rotate_keys.set_defaults(handler=cmd_connections_rotate_keys)

    if more is not None:
        more(commands)
    return parser


def main(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    import warnings

    warnings.filterwarnings("ignore", module="dagster")
    args = (parser or build_parser()).parse_args(argv)
    handler = args.handler
    try:
        code: int = handler(args)
    except BrokenPipeError:  # output piped into `head`
        return EXIT_OK
    return code


if __name__ == "__main__":
    sys.exit(main())
