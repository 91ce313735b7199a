"""`flowmaestro` command line: the Dagster side's commands (validate, run, worker, migrate)
plus the API's: dev (Dagster UI + daemon + API), api, keys."""

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowmaestro_api.settings import get_api_settings
from flowmaestro_dagster import cli as dagster_cli
from flowmaestro_dagster.cli import EXIT_OK, ensure_dagster_home
from flowmaestro_dagster.settings import PROJECT_ROOT


def _dev_api_key(home: Path) -> str:
    """The development user's API key, created once and kept in DAGSTER_HOME (git-ignored)."""
    from flowmaestro_api.security import authenticate, create_api_key, ensure_user
    from flowmaestro_dagster.store.db import get_engine, migrate, session_scope

    url = get_api_settings().database_url
    migrate(url)
    key_file = home / "dev-api-key"
    with session_scope(get_engine(url)) as session:
        if key_file.exists():
            try:
                authenticate(session, key_file.read_text().strip())
                return key_file.read_text().strip()
            except Exception:  # noqa: BLE001 - a stale key (new database): make a new one
                pass
        user = ensure_user(session, email="dev@localhost", name="Developer")
        key = create_api_key(session, user=user, name="development")
    key_file.write_text(key)
    key_file.chmod(0o600)
    return key


def cmd_dev(args: argparse.Namespace) -> int:
    """Dagster webserver + daemon (examples, platform sensors, deployed workflows) and the API."""
    from flowmaestro_dagster.orchestration.instance_config import (
        prepare_storage,
        write_instance_yaml,
    )
    from flowmaestro_dagster.orchestration.workspace import write_workspace

    settings = api = get_api_settings()
    home = ensure_dagster_home()
    write_instance_yaml(home, api)  # run queue limits from the FLOWMAESTRO_* settings
    prepare_storage(api)  # PostgreSQL: the Dagster schema
    host, port = args.host or settings.webserver_host, args.port or settings.webserver_port
    env = dict(os.environ)
    env.setdefault("FLOWMAESTRO_DAGSTER_GRAPHQL_URL", f"http://{host}:{port}/graphql")
    env.setdefault("FLOWMAESTRO_DAGSTER_UI_URL", f"http://{host}:{port}")
    workspace = write_workspace(home / "workspace.yaml", api.code_location_shards)
    key = _dev_api_key(home)
    bin_dir = Path(sys.executable).parent
    # A shell's background job starts with SIGINT ignored, and children inherit "ignored";
    # with a handler installed here, exec resets it to the default in the children.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    dagster = subprocess.Popen(
        [str(bin_dir / "dagster"), "dev", "-w", str(workspace), "-h", host, "-p", str(port)],
        cwd=PROJECT_ROOT,
        env=env,
    )
    processes = [dagster]
    if not args.no_api:
        processes.append(
            subprocess.Popen(
                [
                    str(bin_dir / "flowmaestro"),
                    "api",
                    "--host",
                    api.api_host,
                    "--port",
                    str(api.api_port),
                ],
                cwd=PROJECT_ROOT,
                env=env,
            )
        )
    print(f"DAGSTER_HOME={home}")
    print(f"Dagster UI:  http://{host}:{port}")
    if not args.no_api:
        print(f"API:         http://{api.api_host}:{api.api_port}  (docs at /docs)")
        print(f"API key:     {key}   (user dev@localhost; also in {home / 'dev-api-key'})")

    def stop(_signum: int, _frame: object) -> None:
        for process in processes:
            # `dagster dev` shuts its webserver, daemon and code servers down on SIGINT.
            process.send_signal(signal.SIGINT)

    signal.signal(signal.SIGTERM, stop)
    try:
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    stop(signal.SIGINT, None)
    codes = []
    for process in processes:
        try:
            codes.append(process.wait(timeout=60))
        except subprocess.TimeoutExpired:
            process.kill()
            codes.append(process.wait())
    return max(codes, default=0)


def cmd_api(args: argparse.Namespace) -> int:
    """The HTTP API alone (uvicorn)."""
    import uvicorn

    api = get_api_settings()
    ensure_dagster_home()
    uvicorn.run(
        "flowmaestro_api.main:create_app",
        factory=True,
        host=args.host or api.api_host,
        port=args.port or api.api_port,
        workers=args.workers,
        log_level="info",
    )
    return EXIT_OK


def cmd_keys_create(args: argparse.Namespace) -> int:
    """Create an API key for a user (created if new); the key is shown once."""
    from flowmaestro_api.security import create_api_key, ensure_user
    from flowmaestro_dagster.store.db import get_engine, migrate, session_scope

    url = get_api_settings().database_url
    migrate(url)
    with session_scope(get_engine(url)) as session:
        user = ensure_user(session, email=args.email, name=args.name or "")
        key = create_api_key(session, user=user, name=args.label or "")
    print(key)
    return EXIT_OK


def add_api_commands(commands: Any) -> None:
    dev = commands.add_parser("dev", help="start the Dagster UI, daemon and the API")
    dev.add_argument("--host", default=None, help="Dagster UI host")
    dev.add_argument("--port", type=int, default=None, help="Dagster UI port")
    dev.add_argument("--no-api", action="store_true", help="start Dagster only")
    dev.set_defaults(handler=cmd_dev)

    api = commands.add_parser("api", help="start the HTTP API alone")
    api.add_argument("--host", default=None)
    api.add_argument("--port", type=int, default=None)
    api.add_argument("--workers", type=int, default=1)
    api.set_defaults(handler=cmd_api)

    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create an API key (printed once)")
    create.add_argument("--email", required=True, help="the user the key belongs to")
    create.add_argument("--name", default=None, help="the user's display name")
    create.add_argument("--label", default=None, help="a name for the key")
    create.set_defaults(handler=cmd_keys_create)


def build_parser() -> argparse.ArgumentParser:
    return dagster_cli.build_parser(add_api_commands, description=__doc__)


def main(argv: Sequence[str] | None = None) -> int:
    return dagster_cli.main(argv, build_parser())


if __name__ == "__main__":
    sys.exit(main())
