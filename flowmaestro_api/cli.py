"""`flowmaestro` command line: the Dagster side's commands (validate, run, worker, migrate)
plus the API's: dev (Dagster UI + daemon + API), api, keys."""

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowmaestro_api.settings import get_api_settings
from flowmaestro_dagster import cli as dagster_cli
from flowmaestro_dagster.cli import EXIT_OK, EXIT_USAGE, ensure_dagster_home
from flowmaestro_dagster.settings import PROJECT_ROOT

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
DEV_LOG_LEVEL_ENV = "FLOWMAESTRO_DEV_LOG_LEVEL"
# `dagster dev` warns on every start that `dg dev` supersedes it; `dg dev` is in the
# dagster-dg-cli package, which this project does not install. Ignored in that process only
# (`-W` is not inherited by its webserver, daemon and code servers).
DAGSTER_DEV_SUPERSEDED = "ignore:Function `dev_command` is superseded:FutureWarning"
READY_TIMEOUT_SECONDS = 180.0


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


def dev_log_level(flag: str | None) -> str:
    """`--log-level`, else FLOWMAESTRO_DEV_LOG_LEVEL, else warning: an idle platform logs every
    sensor tick and request at info, which buries the URLs, the key and the problems."""
    level = (flag or os.environ.get(DEV_LOG_LEVEL_ENV) or "warning").strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def dev_commands(
    *, host: str, port: int, workspace: Path, log_level: str, api_host: str, api_port: int
) -> tuple[list[str], list[str]]:
    """The `dagster dev` and `flowmaestro api` command lines that `flowmaestro dev` starts."""
    dagster = [sys.executable, "-W", DAGSTER_DEV_SUPERSEDED, "-m", "dagster", "dev"]
    dagster += ["-w", str(workspace), "-h", host, "-p", str(port)]
    dagster += ["--log-level", log_level, "--code-server-log-level", log_level]
    api = [str(Path(sys.executable).parent / "flowmaestro"), "api"]
    api += ["--host", api_host, "--port", str(api_port), "--log-level", log_level]
    return dagster, api


def probe_url(host: str, port: int, path: str) -> str:
    """The URL that reaches a server listening on `host` from this host."""
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"


# Straight to the local servers, whatever HTTP(S)_PROXY says.
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def answers(url: str) -> bool:
    """Whether a server answers at `url` yet (any HTTP status counts)."""
    try:
        with _direct.open(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):  # refused while starting; a malformed host
        return False


def _stop_and_wait(processes: list[subprocess.Popen[bytes]]) -> int:
    """SIGINT each child once (the graceful path of `dagster dev` and uvicorn); a group that
    is still there after 60 s is killed, with the webserver, daemon and code servers in it."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    codes = []
    for process in processes:
        try:
            codes.append(process.wait(timeout=60))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            codes.append(process.wait())
    return max(codes, default=0)


def cmd_dev(args: argparse.Namespace) -> int:
    """Dagster webserver + daemon (examples, platform sensors, deployed workflows) and the API."""
    try:
        log_level = dev_log_level(args.log_level)
    except ValueError as exc:
        print(f"flowmaestro dev: {exc} (--log-level or {DEV_LOG_LEVEL_ENV})", file=sys.stderr)
        return EXIT_USAGE

    from flowmaestro_dagster.orchestration.instance_config import (
        prepare_storage,
        write_instance_yaml,
    )
    from flowmaestro_dagster.orchestration.workspace import (
        CodeServerAddress,
        code_server_dir,
        write_workspace,
    )

    settings = api = get_api_settings()
    home = ensure_dagster_home()
    write_instance_yaml(home, api)  # run queue limits from the FLOWMAESTRO_* settings
    prepare_storage(api)  # PostgreSQL: the Dagster schema
    host, port = args.host or settings.webserver_host, args.port or settings.webserver_port
    env = dict(os.environ)
    env.setdefault("FLOWMAESTRO_DAGSTER_GRAPHQL_URL", f"http://{host}:{port}/graphql")
    env.setdefault("FLOWMAESTRO_DAGSTER_UI_URL", f"http://{host}:{port}")
    # Run workers print their events at the same level (the Dagster UI keeps them all).
    env.setdefault("FLOWMAESTRO_RUN_CONSOLE_LOG_LEVEL", log_level.upper())
    code_server = (
        CodeServerAddress(socket_dir=code_server_dir(home / "code-server"))
        if api.code_server == "shared"
        else None
    )
    workspace = write_workspace(
        home / "workspace.yaml", api.code_location_shards, code_server=code_server
    )
    key = _dev_api_key(home)
    dagster_command, api_command = dev_commands(
        host=host,
        port=port,
        workspace=workspace,
        log_level=log_level,
        api_host=api.api_host,
        api_port=api.api_port,
    )
    commands = [dagster_command] if args.no_api else [dagster_command, api_command]
    probes = [probe_url(host, port, "/server_info")]
    if not args.no_api:
        probes.append(probe_url(api.api_host, api.api_port, "/docs"))

    def announce(ready: bool) -> None:
        print(f"DAGSTER_HOME={home}")
        print(f"Dagster UI:  http://{host}:{port}")
        if not args.no_api:
            print(f"API:         http://{api.api_host}:{api.api_port}  (docs at /docs)")
            print(f"API key:     {key}   (user dev@localhost; also in {home / 'dev-api-key'})")
        state = "Ready" if ready else f"Not answering after {READY_TIMEOUT_SECONDS:.0f} s"
        more = "" if log_level in ("info", "debug") else f"; all logs: {DEV_LOG_LEVEL_ENV}=info"
        print(f"{state}. Ctrl-C stops{more}", flush=True)

    processes: list[subprocess.Popen[bytes]] = []

    def forward(_signum: int, _frame: object) -> None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)

    # Ctrl-C, `kill` and a closed terminal all end the loop below, which stops the children
    # once. (A shell's background job starts with SIGINT ignored, and children inherit
    # "ignored"; with a handler installed here, exec resets it to the default in them.)
    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for signum in stop_signals:
        signal.signal(signum, signal.default_int_handler)
    print(f"Starting Dagster and the API (logs: {log_level} and above) ...", flush=True)
    try:
        if code_server is not None:  # the shard locations answer before Dagster loads them
            processes.append(_start_code_server(home, code_server, api.code_location_shards, env))
        for command in commands:
            # Its own process group: Ctrl-C reaches this process alone, which passes exactly
            # one SIGINT on (a second one makes uvicorn skip the app's shutdown and
            # `dagster dev` abort).
            processes.append(
                subprocess.Popen(
                    command, cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, process_group=0
                )
            )
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        announced = False
        while all(p.poll() is None for p in processes):
            if not announced:
                ready = all(map(answers, probes))
                if ready or time.monotonic() > deadline:
                    announce(ready)
                    announced = True
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for signum in stop_signals:
            signal.signal(signum, forward)  # another Ctrl-C is passed on: it forces
        with contextlib.suppress(OSError):  # the terminal may be gone
            print("Stopping ...", flush=True)
        code = _stop_and_wait(processes)
    return code


def _start_code_server(
    home: Path, address: Any, shards: int, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """`flowmaestro code-server` (every deployed-workflow location in one process), waited
    for until it answers; if it does not in time, Dagster shows its locations as errors."""
    from flowmaestro_dagster.orchestration.code_server import (
        code_server_command,
        wait_until_ready,
    )

    ready = home / "code-server.ready"
    ready.unlink(missing_ok=True)
    command = code_server_command(
        address, shards, ready, [str(Path(sys.executable).parent / "flowmaestro")]
    )
    process = subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, process_group=0
    )
    if not wait_until_ready(ready, process, timeout=READY_TIMEOUT_SECONDS):
        print("flowmaestro dev: the code server is not answering yet", file=sys.stderr)
    return process


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
        log_level=args.log_level,
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
    dev = commands.add_parser(
        "dev",
        help="start the Dagster UI, daemon and the API",
        description="Start the Dagster webserver, daemon and code servers, and the API; print "
        "their URLs and the development API key once they answer.",
    )
    dev.add_argument("--host", default=None, help="Dagster UI host")
    dev.add_argument("--port", type=int, default=None, help="Dagster UI port")
    dev.add_argument("--no-api", action="store_true", help="start Dagster only")
    dev.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default=None,
        help=f"what Dagster and the API log (default: ${DEV_LOG_LEVEL_ENV}, else warning: "
        "problems only; info shows every sensor tick and request)",
    )
    dev.set_defaults(handler=cmd_dev)

    api = commands.add_parser("api", help="start the HTTP API alone")
    api.add_argument("--host", default=None)
    api.add_argument("--port", type=int, default=None)
    api.add_argument("--workers", type=int, default=1)
    api.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, default="info")
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
