"""`python -m bench` (scripts/bench.sh): run every benchmark section and write the raw results
to bench/results/<stamp>.json and the report to docs/benchmarks.md.

    python -m bench                      # everything (~25 min on 2 idle cores), rewrites the docs
    python -m bench --quick              # smoke run: small samples, a banner says so
    python -m bench --only parallel,api  # some sections; the docs only with --docs
    python -m bench --render bench/results/<stamp>.json   # re-render the docs, run nothing

Each section runs in its own process with a timeout; one that fails or times out is recorded
with its error and the others go on.
"""

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bench.report import render
from bench.sections import BY_NAME, SECTIONS, Section

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
REPORT = ROOT / "docs" / "benchmarks.md"
PACKAGES = ("dagster", "dagster-celery", "fastapi", "uvicorn", "sqlalchemy", "pydantic")


def _package(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _postgres_version() -> str:
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(
            "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres", poolclass=sa.pool.NullPool
        )
        with engine.connect() as connection:
            found = str(connection.execute(sa.text("SHOW server_version")).scalar())
        return found.split(maxsplit=1)[0]
    except Exception as exc:  # noqa: BLE001 - the report says why
        return f"unavailable ({type(exc).__name__})"


def _redis_version() -> str:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=2) as sock:
            sock.sendall(b"INFO server\r\n")
            time.sleep(0.1)
            text = sock.recv(65536).decode(errors="replace")
        return next(
            (
                line.split(":", 1)[1].strip()
                for line in text.splitlines()
                if "redis_version" in line
            ),
            "unknown",
        )
    except OSError as exc:
        return f"unavailable ({type(exc).__name__})"


def _git() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{commit}{' (uncommitted changes in the tree)' if dirty else ''}"


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gb = None
    with contextlib.suppress(OSError, ValueError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory_gb = round(kb / 1024 / 1024, 1)
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": {name: _package(name) for name in PACKAGES},
        "sqlite": sqlite3.sqlite_version,
        "postgresql": _postgres_version(),
        "redis": _redis_version(),
        "commit": _git(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }


def run_section(section: Section, quick: bool, logs: Path) -> dict[str, Any]:
    """The section in a child process; {"seconds", "result"} or {"seconds", "error"}."""
    out = logs / f"{section.name}.json"
    log = logs / f"{section.name}.log"
    command = [sys.executable, "-m", "bench.sections", section.name, str(out)]
    if quick:
        command.append("--quick")
    started = time.monotonic()
    with log.open("wb") as stream:
        child = subprocess.Popen(
            command, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True
        )
        timeout = section.timeout_seconds(quick)
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGINT)  # its stacks stop in `finally` blocks
            try:
                child.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
            return {
                "seconds": round(time.monotonic() - started, 1),
                "error": f"timed out after {timeout / 60:.0f} min (log: {log.relative_to(ROOT)})",
            }
    seconds = round(time.monotonic() - started, 1)
    try:
        found: dict[str, Any] = json.loads(out.read_text())
    except (OSError, ValueError):
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return {"seconds": seconds, "error": f"exited {child.returncode}: {tail[0]}"}
    return {"seconds": seconds, **found}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the benchmarks; write docs/benchmarks.md.")
    parser.add_argument("--quick", action="store_true", help="smoke run: small sample counts")
    parser.add_argument(
        "--only", help=f"comma-separated sections: {', '.join(s.name for s in SECTIONS)}"
    )
    docs = parser.add_mutually_exclusive_group()
    docs.add_argument("--docs", action="store_true", help="write the docs even with --only")
    docs.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    parser.add_argument("--render", type=Path, help="render the docs from a results file")
    parser.add_argument(
        "--into",
        type=Path,
        help="with --only: replace those sections in this earlier results file (the rerun is "
        "recorded there under 'reruns') and render the docs from it",
    )
    args = parser.parse_args(argv)
    if args.into and not args.only:
        parser.error("--into needs --only")

    if args.render:
        REPORT.write_text(render(json.loads(args.render.read_text())))
        print(f"wrote {REPORT.relative_to(ROOT)} from {args.render}")
        return 0
    names = [n.strip() for n in args.only.split(",")] if args.only else [s.name for s in SECTIONS]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}")

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    logs = RESULTS / stamp
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "stamp": stamp,
        "quick": args.quick,
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "sections": {},
    }
    started = time.monotonic()
    for name in names:
        section = BY_NAME[name]
        print(f"[bench] {name} ...", flush=True)
        results["sections"][name] = found = run_section(section, args.quick, logs)
        state = f"error: {found['error']}" if "error" in found else "ok"
        print(f"[bench] {name}: {state} ({found['seconds']} s)", flush=True)
        # Written after every section: an interrupted run keeps what it measured.
        results["total_seconds"] = round(time.monotonic() - started, 1)
        results["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        (RESULTS / f"{stamp}.json").write_text(json.dumps(results, indent=2))
    print(f"[bench] results: {(RESULTS / f'{stamp}.json').relative_to(ROOT)}")
    if args.into:
        earlier: dict[str, Any] = json.loads(args.into.read_text())
        earlier["sections"].update(results["sections"])
        earlier.setdefault("reruns", []).append(
            {"stamp": stamp, "command": results["command"], "sections": names}
        )
        args.into.write_text(json.dumps(earlier, indent=2))
        results = earlier
        print(f"[bench] merged into {args.into}")
    if not args.no_docs and (args.docs or args.into or not args.only):
        REPORT.write_text(render(results))
        print(f"[bench] wrote {REPORT.relative_to(ROOT)}")
    failed = [n for n, s in results["sections"].items() if "error" in s]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
